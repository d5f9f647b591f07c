variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "availability_zones" {
  description = "the two zones of var.region for the subnets; change them with the region"
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b"]
  validation {
    condition     = length(var.availability_zones) == 2
    error_message = "availability_zones must name exactly two zones."
  }
}

variable "environment" {
  type    = string
  default = "prod"
}

variable "name" {
  type    = string
  default = "modalfuse"
}

variable "image_tag" {
  description = "tag of the serve and train images pushed to ECR"
  type        = string
}

variable "api_cpu" {
  description = "Fargate CPU units per API task (1024 = 1 vCPU)"
  type        = number
  default     = 1024
}

variable "api_memory" {
  type    = number
  default = 2048
}

variable "api_desired_count" {
  type    = number
  default = 2
}

variable "model_uri" {
  description = "what the API serves: models:/pokemon@champion (MLflow registry) by default"
  type        = string
  default     = "models:/pokemon@champion"
}

variable "allowed_cidrs" {
  description = "who may reach the load balancer"
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS on the load balancer; empty: HTTP only (testing)"
  type        = string
  default     = ""
}
