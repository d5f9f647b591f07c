output "api_url" {
  value = "${var.certificate_arn == "" ? "http" : "https"}://${aws_lb.api.dns_name}"
}

output "ecr_serve" {
  value = aws_ecr_repository.images["serve"].repository_url
}

output "ecr_train" {
  value = aws_ecr_repository.images["train"].repository_url
}

output "artifacts_bucket" {
  value = aws_s3_bucket.artifacts.bucket
}

output "api_key_secret" {
  value = aws_secretsmanager_secret.api_key.name
}

output "batch_task_definition" {
  value = aws_ecs_task_definition.batch.arn
}

output "private_subnets" {
  value = aws_subnet.private[*].id
}

output "tasks_security_group" {
  value = aws_security_group.tasks.id
}
