"""Monthly cost estimate of the deploy/aws stack from unit prices: `python deploy/aws/cost.py`.

Unit prices are AWS on-demand list prices for eu-west-1 as written below (USD, before
tax, no free tier, no savings plans). They change: check them against the AWS pricing
calculator before relying on the total. Sizes are the Terraform defaults.
"""

from __future__ import annotations

import argparse

HOURS = 730  # hours in an average month

# (unit price, unit) - edit when AWS changes its prices.
PRICES = {
    "fargate_vcpu_hour": 0.04048,
    "fargate_gb_hour": 0.004445,
    "alb_hour": 0.0252,
    "alb_lcu_hour": 0.008,
    "nat_hour": 0.048,
    "nat_gb": 0.048,
    "rds_t4g_micro_hour": 0.018,
    "rds_gp2_gb_month": 0.127,
    "s3_gb_month": 0.023,
    "ecr_gb_month": 0.10,
    "secret_month": 0.40,
    "cloudwatch_logs_gb": 0.57,
}


def estimate(api_tasks: int = 2, api_vcpu: float = 1, api_gb: float = 2, batch_hours: float = 10,
             nat_gb: float = 20, s3_gb: float = 50, logs_gb: float = 5) -> dict[str, float]:
    p = PRICES
    fargate = p["fargate_vcpu_hour"], p["fargate_gb_hour"]
    lines = {
        "API on Fargate": api_tasks * HOURS * (api_vcpu * fargate[0] + api_gb * fargate[1]),
        "MLflow server on Fargate (0.5 vCPU, 1 GB)": HOURS * (0.5 * fargate[0] + 1 * fargate[1]),
        "batch task (4 vCPU, 8 GB) per month of use": batch_hours * (4 * fargate[0] + 8 * fargate[1]),
        "load balancer (1 LCU)": HOURS * (p["alb_hour"] + p["alb_lcu_hour"]),
        "NAT gateway": HOURS * p["nat_hour"] + nat_gb * p["nat_gb"],
        "RDS PostgreSQL db.t4g.micro, 20 GB": HOURS * p["rds_t4g_micro_hour"]
        + 20 * p["rds_gp2_gb_month"],
        "S3 artifacts": s3_gb * p["s3_gb_month"],
        "ECR images (about 3 GB kept)": 3 * p["ecr_gb_month"],
        "Secrets Manager (2 secrets)": 2 * p["secret_month"],
        "CloudWatch logs": logs_gb * p["cloudwatch_logs_gb"],
    }
    lines["total"] = sum(lines.values())
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--api-tasks", type=int, default=2)
    ap.add_argument("--batch-hours", type=float, default=10)
    args = ap.parse_args()
    lines = estimate(api_tasks=args.api_tasks, batch_hours=args.batch_hours)
    out = ["| item | USD / month |", "| --- | --- |"]
    out += [f"| {k} | {v:,.2f} |" for k, v in lines.items()]
    print("\n".join(out))  # noqa: T201 (a script's output)


if __name__ == "__main__":
    main()
