variable "region" {
  description = "AWS region for every DermaOps resource."
  type        = string
  default     = "us-east-1"
}

variable "bucket_prefix" {
  description = "Bucket names are <prefix>-raw, -processed, -models, -logs (DERMAOPS_BUCKET_PREFIX). S3 names are global: include your account or org."
  type        = string
  default     = "dermaops"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}$", var.bucket_prefix))
    error_message = "bucket_prefix must be lowercase letters, digits and hyphens (2-41 characters)."
  }
}

variable "environment" {
  description = "Deployment name, used in tags (e.g. dev, prod)."
  type        = string
  default     = "dev"
}

variable "model_package_group_name" {
  description = "SageMaker Model Registry group (DERMAOPS_MODEL_PACKAGE_GROUP)."
  type        = string
  default     = "dermaops-lesion-classifier"
}

variable "endpoint_name" {
  description = "SageMaker endpoint name (DERMAOPS_ENDPOINT_NAME)."
  type        = string
  default     = "dermaops-lesion-endpoint"
}

variable "alerts_topic_name" {
  description = "SNS topic for alarms and pipeline notifications."
  type        = string
  default     = "dermaops-alerts"
}

variable "alert_email" {
  description = "Optional e-mail subscribed to the alerts topic (confirm the subscription mail)."
  type        = string
  default     = ""
}

variable "dagster_trusted_principal_arns" {
  description = "IAM principals (e.g. the ECS task role or EC2 instance role running Dagster) allowed to assume the Dagster deployment role."
  type        = list(string)
  default     = []
}

variable "dagster_on_ecs" {
  description = "Also let ECS tasks assume the Dagster deployment role directly (task role)."
  type        = bool
  default     = true
}

variable "logs_retention_days" {
  description = "Days to keep the logs bucket (data capture, alerts) and SageMaker CloudWatch log groups."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
