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

variable "noncurrent_version_retention_days" {
  description = "Days to keep noncurrent (overwritten or deleted) versions in the raw and processed buckets."
  type        = number
  default     = 90
}

variable "checkpoint_retention_days" {
  description = "Days before training checkpoints (models bucket, checkpoints/) expire; they only serve to resume an interrupted spot job."
  type        = number
  default     = 14
}

# ---- audit -------------------------------------------------------------------------------

variable "create_cloudtrail" {
  description = "Create the DermaOps CloudTrail trail (management events incl. KMS, S3 data events on the patient-data buckets). Set false, or set existing_trail_arn, when an organisation trail already records them."
  type        = bool
  default     = true
}

variable "existing_trail_arn" {
  description = "ARN of an existing (organisation) trail that records S3 data events on the raw, processed and logs buckets; when set, no trail is created."
  type        = string
  default     = ""
}

variable "audit_log_retention_days" {
  description = "Days to keep S3 server access logs and CloudTrail log files."
  type        = number
  default     = 365
}

# ---- network -----------------------------------------------------------------------------

variable "enable_vpc" {
  description = "Create private subnets and VPC endpoints (S3, SageMaker API/runtime, CloudWatch Logs/monitoring, KMS, STS, ECR, Secrets Manager) for SageMaker and Dagster. Outputs feed DERMAOPS_VPC_SUBNETS / DERMAOPS_VPC_SECURITY_GROUPS."
  type        = bool
  default     = false
}

variable "vpc_cidr" {
  description = "CIDR of the DermaOps VPC (enable_vpc)."
  type        = string
  default     = "10.42.0.0/16"
}

variable "vpc_az_count" {
  description = "Number of availability zones (one private subnet each)."
  type        = number
  default     = 2
}

# ---- delivery (GitHub Actions, .github/workflows/cd.yml) ---------------------------------

variable "github_repository" {
  description = "GitHub repository (owner/name) whose v* tags may assume the deploy role; empty: no OIDC provider or deploy role."
  type        = string
  default     = ""

  validation {
    condition     = var.github_repository == "" || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name, without wildcards."
  }
}

variable "github_oidc_provider_arn" {
  description = "Existing token.actions.githubusercontent.com OIDC provider (one per account); empty: create it."
  type        = string
  default     = ""
}

variable "terraform_state_bucket" {
  description = "S3 bucket holding the Terraform state (backend), read by the deploy role for `terraform plan`."
  type        = string
  default     = "dermaops-terraform-state"
}

variable "terraform_state_key" {
  description = "Backend key of the state."
  type        = string
  default     = "dermaops/terraform.tfstate"
}

variable "terraform_state_workspace_key_prefix" {
  description = "Backend workspace_key_prefix (the S3 backend's default is env:)."
  type        = string
  default     = "env:"
}

variable "terraform_workspace" {
  description = "The named workspace cd.yml plans against (TF_WORKSPACE)."
  type        = string
  default     = "prod"
}

variable "terraform_state_kms_key_arn" {
  description = "KMS key of the state bucket, if it is SSE-KMS encrypted with a customer key."
  type        = string
  default     = ""
}

# ---- Dagster on AWS ----------------------------------------------------------------------

variable "enable_dagster_on_aws" {
  description = "Run Dagster on ECS Fargate (webserver + daemon, EcsRunLauncher) with an RDS PostgreSQL instance (deploy/dagster.aws.yaml). Needs enable_vpc and dagster_image."
  type        = bool
  default     = false
}

variable "dagster_image" {
  description = "Image with the DermaOps code location and DAGSTER_HOME=/opt/dagster/dagster_home holding deploy/dagster.aws.yaml as dagster.yaml."
  type        = string
  default     = ""
}

variable "dagster_db_instance_class" {
  description = "RDS instance class of the Dagster database."
  type        = string
  default     = "db.t4g.small"
}

variable "dagster_db_multi_az" {
  description = "Standby in a second availability zone."
  type        = bool
  default     = true
}

variable "dagster_db_app_user" {
  description = "Database user Dagster connects as with IAM authentication (DAGSTER_PG_USERNAME); created once, see README."
  type        = string
  default     = "dagster_app"
}

variable "dagster_webserver_allowed_cidrs" {
  description = "Operator networks (VPN, Direct Connect) allowed to reach the Dagster UI on port 3000; empty: none."
  type        = list(string)
  default     = []
}
