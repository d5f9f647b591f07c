# ECS Fargate: the API behind an application load balancer, the MLflow server, and the
# batch-job task definition (run on demand, see batch.tf).
resource "aws_ecs_cluster" "main" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "ecs" {
  #checkov:skip=CKV_AWS_158:encrypted at rest by CloudWatch Logs' own key; the lines hold request ids, statuses and timings, no secrets or inputs, and IAM on the group decides who reads them
  #checkov:skip=CKV_AWS_338:operational logs, kept 30 days; what must last longer (prediction log, model versions, retrain reports) is kept in S3 and MLflow
  name              = "/ecs/${var.name}"
  retention_in_days = 30
}

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow", Action = ["secretsmanager:GetSecretValue"]
      Resource = [aws_secretsmanager_secret.api_key.arn, aws_secretsmanager_secret.db_password.arn]
    }]
  })
}

# What the containers themselves may do: read and write the artifact bucket, nothing else.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_iam_role_policy" "task_s3" {
  role = aws_iam_role.task.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["s3:ListBucket"], Resource = [aws_s3_bucket.artifacts.arn] },
      { Effect   = "Allow", Action = ["s3:GetObject", "s3:PutObject"],
        Resource = ["${aws_s3_bucket.artifacts.arn}/*"] },
    ]
  })
}

locals {
  serve_image = "${aws_ecr_repository.images["serve"].repository_url}:${var.image_tag}"
  train_image = "${aws_ecr_repository.images["train"].repository_url}:${var.image_tag}"
  log_options = {
    "awslogs-group"         = aws_cloudwatch_log_group.ecs.name
    "awslogs-region"        = var.region
    "awslogs-stream-prefix" = "ecs"
  }
  mlflow_uri = "http://mlflow.${var.name}.local:5000"
}

resource "aws_service_discovery_private_dns_namespace" "main" {
  name = "${var.name}.local"
  vpc  = aws_vpc.main.id
}

resource "aws_service_discovery_service" "mlflow" {
  name = "mlflow"
  dns_config {
    namespace_id = aws_service_discovery_private_dns_namespace.main.id
    dns_records {
      ttl  = 10
      type = "A"
    }
  }
}

resource "aws_ecs_task_definition" "api" {
  family                   = "${var.name}-api"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.api_cpu
  memory                   = var.api_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([{
    name         = "api"
    image        = local.serve_image
    essential    = true
    portMappings = [{ containerPort = 8000, protocol = "tcp" }]
    environment = [
      { name = "MODALFUSE_ENVIRONMENT", value = "production" },
      { name = "MODALFUSE_MODEL_URI", value = var.model_uri },
      { name = "MLFLOW_TRACKING_URI", value = local.mlflow_uri },
    ]
    secrets = [{ name = "MODALFUSE_API_KEY", valueFrom = aws_secretsmanager_secret.api_key.arn }]
    logConfiguration = { logDriver = "awslogs", options = local.log_options }
    healthCheck = {
      command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
      interval    = 15, timeout = 5, retries = 3, startPeriod = 60
    }
  }])
}

resource "aws_lb" "api" {
  #checkov:skip=CKV_AWS_91:every request is logged by the API itself (JSON lines with request id, status and latency, in CloudWatch); ALB access logs would need a second, SSE-S3 bucket to say the same
  #checkov:skip=CKV2_AWS_28:no WAF by default (from 6 USD a month plus per request): the API needs its key and limits body size and rate itself, and allowed_cidrs narrows who reaches it; add AWS managed rules before opening it to the whole internet at volume
  name                       = "${var.name}-api"
  load_balancer_type         = "application"
  subnets                    = aws_subnet.public[*].id
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true # its DNS name is the API's address; set false to destroy
}

resource "aws_lb_target_group" "api" {
  name        = "${var.name}-api"
  port        = 8000
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = aws_vpc.main.id
  health_check {
    path    = "/health"
    matcher = "200"
  }
  deregistration_delay = 30
}

resource "aws_lb_listener" "api" {
  #checkov:skip=CKV_AWS_103:with certificate_arn set the listener is HTTPS with ELBSecurityPolicy-TLS13-1-2-2021-06 (TLS 1.2 and 1.3 only); without one it is plain HTTP, documented as for a first test only
  load_balancer_arn = aws_lb.api.arn
  port              = local.listener_port
  protocol          = var.certificate_arn == "" ? "HTTP" : "HTTPS"
  certificate_arn   = var.certificate_arn == "" ? null : var.certificate_arn
  ssl_policy        = var.certificate_arn == "" ? null : "ELBSecurityPolicy-TLS13-1-2-2021-06"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

resource "aws_ecs_service" "api" {
  name            = "${var.name}-api"
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.api.arn
  desired_count   = var.api_desired_count
  launch_type     = "FARGATE"
  network_configuration {
    subnets         = aws_subnet.private[*].id
    security_groups = [aws_security_group.tasks.id]
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.api.arn
    container_name   = "api"
    container_port   = 8000
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  depends_on = [aws_lb_listener.api]
}

resource "aws_appautoscaling_target" "api" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.api.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.api_desired_count
  max_capacity       = var.api_desired_count * 4
}

resource "aws_appautoscaling_policy" "api_cpu" {
  name               = "${var.name}-api-cpu"
  service_namespace  = aws_appautoscaling_target.api.service_namespace
  resource_id        = aws_appautoscaling_target.api.resource_id
  scalable_dimension = aws_appautoscaling_target.api.scalable_dimension
  policy_type        = "TargetTrackingScaling"
  target_tracking_scaling_policy_configuration {
    target_value = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_ecs_task_definition" "mlflow" {
  family                   = "${var.name}-mlflow"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([{
    name         = "mlflow"
    image        = local.train_image
    essential    = true
    entryPoint   = ["sh", "-c"]
    command      = ["exec mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri postgresql+psycopg2://mlflow:$${DB_PASSWORD}@${aws_db_instance.mlflow.address}:5432/mlflow --artifacts-destination s3://${aws_s3_bucket.artifacts.bucket}/mlflow --serve-artifacts"]
    portMappings = [{ containerPort = 5000, protocol = "tcp" }]
    secrets      = [{ name = "DB_PASSWORD", valueFrom = aws_secretsmanager_secret.db_password.arn }]
    logConfiguration = { logDriver = "awslogs", options = local.log_options }
  }])
}

resource "aws_ecs_service" "mlflow" {
  name            = "${var.name}-mlflow"
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.mlflow.arn
  desired_count   = 1
  launch_type     = "FARGATE"
  network_configuration {
    subnets         = aws_subnet.private[*].id
    security_groups = [aws_security_group.tasks.id]
  }
  service_registries {
    registry_arn = aws_service_discovery_service.mlflow.arn
  }
}
