# Images (ECR), artifacts and batch inputs/outputs (S3), MLflow's store (RDS PostgreSQL).
resource "aws_ecr_repository" "images" {
  for_each             = toset(["serve", "train"])
  name                 = "${var.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  # KMS with the AWS-managed ECR key: no key to run or pay for, and every use is in CloudTrail.
  encryption_configuration {
    encryption_type = "KMS"
  }
}

resource "aws_ecr_lifecycle_policy" "keep_recent" {
  for_each   = aws_ecr_repository.images
  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1, description = "keep the 20 most recent images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 20 }
      action       = { type = "expire" }
    }]
  })
}

resource "random_id" "bucket" {
  byte_length = 4
}

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:private, reached only through the task role (IAM) behind a public access block; server access logs need a second bucket (which fails this check in turn): turn on CloudTrail S3 data events for the bucket where an object-level audit trail is required
  #checkov:skip=CKV_AWS_144:no cross-region copy: versioning keeps overwritten and deleted objects for 90 days, and models can be retrained from the versioned dataset; a replica would double storage and need a bucket in a second region
  #checkov:skip=CKV2_AWS_62:nothing reacts to object events: batch and retrain tasks are started explicitly (aws ecs run-task, the EventBridge schedule)
  bucket = "${var.name}-artifacts-${random_id.bucket.hex}"
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

# Versioning alone would keep every overwritten object forever: old versions go after 90 days
# (time to notice a bad overwrite or delete), unfinished multipart uploads after 7.
resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.artifacts]
}

resource "random_password" "db" {
  length  = 32
  special = false
}

resource "random_password" "api_key" {
  length  = 40
  special = false
}

resource "aws_secretsmanager_secret" "db_password" {
  #checkov:skip=CKV_AWS_149:encrypted with the AWS-managed Secrets Manager key; a customer key matters for sharing across accounts or separate key admins, neither of which this one-account deployment has
  #checkov:skip=CKV2_AWS_57:rotated by Terraform, not by a rotation Lambda: `terraform apply -replace=random_password.db` writes a new value to the secret and the database, then a new deployment of the MLflow service reads it (docs/deploy-aws.md)
  name = "${var.name}/mlflow-db-password"
}

resource "aws_secretsmanager_secret_version" "db_password" {
  secret_id     = aws_secretsmanager_secret.db_password.id
  secret_string = random_password.db.result
}

resource "aws_secretsmanager_secret" "api_key" {
  #checkov:skip=CKV_AWS_149:encrypted with the AWS-managed Secrets Manager key; a customer key matters for sharing across accounts or separate key admins, neither of which this one-account deployment has
  #checkov:skip=CKV2_AWS_57:rotated by Terraform, not by a rotation Lambda: `terraform apply -replace=random_password.api_key` writes a new value, then a new deployment of the API service reads it (tasks read the key once, at start) (docs/deploy-aws.md)
  name = "${var.name}/api-key"
}

resource "aws_secretsmanager_secret_version" "api_key" {
  secret_id     = aws_secretsmanager_secret.api_key.id
  secret_string = random_password.api_key.result
}

resource "aws_db_subnet_group" "main" {
  name       = var.name
  subnet_ids = aws_subnet.private[*].id
}

# TLS only (psycopg2's default sslmode=prefer then encrypts); slow statements (over 1 s) and
# schema changes (MLflow's migrations) go to the server log, exported to CloudWatch below.
resource "aws_db_parameter_group" "mlflow" {
  name   = "${var.name}-mlflow-postgres16"
  family = "postgres16"
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

locals {
  rds_log_exports = ["postgresql", "upgrade"]
}

# Created here so that they have a retention; RDS would make them on first export, kept forever.
resource "aws_cloudwatch_log_group" "rds" {
  #checkov:skip=CKV_AWS_158:encrypted at rest by CloudWatch Logs' own key; IAM on the group decides who reads it, so a customer key adds a key policy and a monthly fee and no control used here
  #checkov:skip=CKV_AWS_338:database server logs (slow statements, schema changes, errors), kept 30 days for looking into incidents; the registry's history is in the database itself
  for_each          = toset(local.rds_log_exports)
  name              = "/aws/rds/instance/${var.name}-mlflow/${each.key}"
  retention_in_days = 30
}

resource "aws_db_instance" "mlflow" {
  #checkov:skip=CKV_AWS_157:single-AZ, like the NAT gateway: the registry is read when an API task starts or reloads, and a loaded model keeps serving while the database is away; Multi-AZ would double its cost, and 7 days of backups plus a final snapshot cover loss
  #checkov:skip=CKV_AWS_161:MLflow connects with a static SQLAlchemy URL and cannot renew 15-minute IAM tokens; the password lives in Secrets Manager and the database takes connections from the ECS tasks' security group only
  #checkov:skip=CKV_AWS_118:CloudWatch's standard RDS metrics (CPU, memory, connections, storage) are enough for a small metadata store; enhanced monitoring needs its own IAM role and per-second OS metrics it does not need
  #checkov:skip=CKV_AWS_353:a few MLflow tables under light load: query-level insight is covered by the slow-statement log exported to CloudWatch
  identifier                      = "${var.name}-mlflow"
  engine                          = "postgres"
  engine_version                  = "16"
  instance_class                  = "db.t4g.micro"
  allocated_storage               = 20
  storage_encrypted               = true
  db_name                         = "mlflow"
  username                        = "mlflow"
  password                        = random_password.db.result
  db_subnet_group_name            = aws_db_subnet_group.main.name
  vpc_security_group_ids          = [aws_security_group.db.id]
  parameter_group_name            = aws_db_parameter_group.mlflow.name
  enabled_cloudwatch_logs_exports = local.rds_log_exports
  auto_minor_version_upgrade      = true
  copy_tags_to_snapshot           = true
  backup_retention_period         = 7
  deletion_protection             = true
  skip_final_snapshot             = false
  final_snapshot_identifier       = "${var.name}-mlflow-final"
  depends_on                      = [aws_cloudwatch_log_group.rds]
}
