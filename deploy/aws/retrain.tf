# The retraining trigger on a schedule: EventBridge Scheduler starts an ECS task of the train
# image once a day that runs `modalfuse retrain --if drift --no-dvc` (docs/operations.md).
# The task copies the frozen dataset and the exported prediction log from the artifact bucket,
# decides, retrains, registers the bundle in the MLflow registry as challenger, runs the
# out-of-fold gate, and copies its summary JSON back to s3://<bucket>/reports/retrain/.
# "Nothing to do" and "refused by the gate" are normal outcomes (exit 0); only errors fail.

variable "retrain_schedule" {
  description = "when the retraining check runs (EventBridge Scheduler expression, UTC)"
  type        = string
  default     = "cron(30 3 * * ? *)"
}

variable "retrain_trigger" {
  description = "what makes the scheduled task retrain: drift, performance or always"
  type        = string
  default     = "drift"
  validation {
    condition     = contains(["drift", "performance", "always"], var.retrain_trigger)
    error_message = "retrain_trigger must be drift, performance or always."
  }
}

variable "retrain_dataset" {
  description = "dataset (and registered model) name; its frozen copy is s3://<bucket>/datasets/<name>/"
  type        = string
  default     = "pokemon"
}

variable "retrain_shadow_url" {
  description = "a server to start the refused challenger on as a shadow (POST /admin/shadow); empty: none. Behind the load balancer this reaches one API task only. The tasks may connect out on HTTPS only: give an https:// address (the load balancer with certificate_arn set)"
  type        = string
  default     = ""
}

locals {
  retrain_bucket = "s3://${aws_s3_bucket.artifacts.bucket}"
  retrain_args = join(" ", compact([
    "modalfuse retrain --if ${var.retrain_trigger} --no-dvc --dataset ${var.retrain_dataset}",
    var.retrain_shadow_url == "" ? "" : "--shadow-url ${var.retrain_shadow_url} --api-key-env MODALFUSE_API_KEY",
  ]))
}

resource "aws_ecs_task_definition" "retrain" {
  family                   = "${var.name}-retrain"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 4096
  memory                   = 8192
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  ephemeral_storage {
    size_in_gib = 50
  }
  # The root filesystem is read-only; the task writes only to these two task-storage volumes.
  volume {
    name = "data"
  }
  volume {
    name = "tmp"
  }
  container_definitions = jsonencode([{
    name                   = "retrain"
    image                  = local.train_image
    essential              = true
    readonlyRootFilesystem = true
    mountPoints = [
      { sourceVolume = "data", containerPath = "/data", readOnly = false },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    entryPoint = ["sh", "-c"]
    # The summary is uploaded whatever the outcome, then the task ends with retrain's status.
    command = [join(" ; ", [
      "set -u",
      "python -m modalfuse.scale.aws_batch download ${local.retrain_bucket}/datasets/${var.retrain_dataset} /data/datasets/${var.retrain_dataset} || exit 1",
      "python -m modalfuse.scale.aws_batch download ${local.retrain_bucket}/monitoring /data/monitoring || exit 1",
      "${local.retrain_args}",
      "rc=$?",
      "for f in /data/reports/retrain/*.json; do [ -e \"$f\" ] && python -m modalfuse.scale.aws_batch upload \"$f\" ${local.retrain_bucket}/reports/retrain/$(basename \"$f\"); done",
      "exit $rc",
    ])]
    environment = [
      { name = "MODALFUSE_DATA_DIR", value = "/data" },
      { name = "MODALFUSE_MODEL_URI", value = var.model_uri },
      { name = "MLFLOW_TRACKING_URI", value = local.mlflow_uri },
      { name = "HOME", value = "/tmp" }, # caches (matplotlib, MLflow) under the writable /tmp
    ]
    secrets          = [{ name = "MODALFUSE_API_KEY", valueFrom = aws_secretsmanager_secret.api_key.arn }]
    logConfiguration = { logDriver = "awslogs", options = local.log_options }
  }])
}

# The scheduler's role may start this task family on this cluster and hand it its two roles:
# nothing else.
data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-retrain-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

resource "aws_iam_role_policy" "scheduler_run_task" {
  role = aws_iam_role.scheduler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect    = "Allow", Action = ["ecs:RunTask"]
        Resource  = ["${aws_ecs_task_definition.retrain.arn_without_revision}:*"]
        Condition = { ArnEquals = { "ecs:cluster" = aws_ecs_cluster.main.arn } }
      },
      {
        Effect    = "Allow", Action = ["iam:PassRole"]
        Resource  = [aws_iam_role.execution.arn, aws_iam_role.task.arn]
        Condition = { StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" } }
      },
    ]
  })
}

resource "aws_scheduler_schedule" "retrain" {
  #checkov:skip=CKV_AWS_297:the schedule holds no secret (the API key comes from Secrets Manager when the task starts); AWS-owned key
  name                         = "${var.name}-retrain"
  schedule_expression          = var.retrain_schedule
  schedule_expression_timezone = "UTC"
  flexible_time_window {
    mode                      = "FLEXIBLE"
    maximum_window_in_minutes = 15
  }
  target {
    arn      = aws_ecs_cluster.main.arn
    role_arn = aws_iam_role.scheduler.arn
    ecs_parameters {
      task_definition_arn = aws_ecs_task_definition.retrain.arn
      launch_type         = "FARGATE"
      task_count          = 1
      network_configuration {
        subnets          = aws_subnet.private[*].id
        security_groups  = [aws_security_group.tasks.id]
        assign_public_ip = false
      }
    }
    # A retrain that failed is looked at, not rerun blindly the same night.
    retry_policy {
      maximum_retry_attempts = 0
    }
  }
}

output "retrain_task_definition" {
  value = aws_ecs_task_definition.retrain.arn
}

output "retrain_schedule" {
  value = aws_scheduler_schedule.retrain.arn
}
