# The batch path: an ECS task of the train image that runs `modalfuse predict` (or the Ray
# engine) over a table and images copied from S3, writing the result back to S3. Started
# on demand (EventBridge schedule, Step Functions or `aws ecs run-task`): no idle cost.
resource "aws_ecs_task_definition" "batch" {
  family                   = "${var.name}-batch"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 4096
  memory                   = 8192
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  ephemeral_storage {
    size_in_gib = 50
  }
  container_definitions = jsonencode([{
    name       = "batch"
    image      = local.train_image
    essential  = true
    entryPoint = ["sh", "-c"]
    # INPUT_PREFIX / OUTPUT_KEY are set per run with container overrides. The pyfunc model
    # keeps the bundle folder under its own name in artifacts/ (what fetch_bundle looks for).
    # tests/deploy/test_s3_moto.py runs these steps as written here, against a local S3.
    command = [join(" && ", [
      "mlflow artifacts download --artifact-uri \"$MODALFUSE_MODEL_URI\" --dst-path /data/model",
      "python -m modalfuse.scale.aws_batch download s3://${aws_s3_bucket.artifacts.bucket}/$INPUT_PREFIX /data/in",
      "modalfuse predict --bundle \"$(dirname /data/model/artifacts/*/bundle.json)\" -i /data/in/rows.parquet --images /data/in/images -o /data/out.parquet",
      "python -m modalfuse.scale.aws_batch upload /data/out.parquet s3://${aws_s3_bucket.artifacts.bucket}/$OUTPUT_KEY",
    ])]
    environment = [
      { name = "MODALFUSE_MODEL_URI", value = var.model_uri },
      { name = "MLFLOW_TRACKING_URI", value = local.mlflow_uri },
    ]
    logConfiguration = { logDriver = "awslogs", options = local.log_options }
  }])
}
