output "kms_key_arn" {
  description = "DERMAOPS_KMS_KEY_ID"
  value       = aws_kms_key.dermaops.arn
}

output "bucket_names" {
  description = "Logical bucket -> S3 bucket (DERMAOPS_<RAW|PROCESSED|MODELS|LOGS>_BUCKET)"
  value       = { for b, bucket in aws_s3_bucket.store : b => bucket.bucket }
}

output "sagemaker_execution_role_arn" {
  description = "DERMAOPS_SAGEMAKER_ROLE_ARN: what processing and training jobs run as"
  value       = aws_iam_role.sagemaker_execution.arn
}

output "sagemaker_endpoint_role_arn" {
  description = "DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN: what the endpoint's models run as (CreateModel ExecutionRoleArn): model packages in, data capture out, no raw or processed data"
  value       = aws_iam_role.sagemaker_endpoint.arn
}

output "pseudonym_salt_secret_arn" {
  description = "Secrets Manager secret of DERMAOPS_PSEUDONYM_SALT (created empty: set it once, see README)"
  value       = aws_secretsmanager_secret.pseudonym_salt.arn
}

output "vpc_subnet_ids" {
  description = "DERMAOPS_VPC_SUBNETS (comma-join them); empty unless enable_vpc"
  value       = aws_subnet.private[*].id
}

output "vpc_security_group_ids" {
  description = "DERMAOPS_VPC_SECURITY_GROUPS (comma-join them); empty unless enable_vpc"
  value       = aws_security_group.sagemaker[*].id
}

output "audit_trail_arn" {
  description = "CloudTrail trail recording S3 data events on the patient-data buckets (created, or existing_trail_arn)"
  value       = local.audit_trail
}

output "access_log_bucket" {
  description = "S3 server access logs of the store buckets (prefix s3/<bucket>/)"
  value       = aws_s3_bucket.access_logs.bucket
}

output "github_deploy_role_arn" {
  description = "role-to-assume for .github/workflows/cd.yml (repository secret AWS_DEPLOY_ROLE_ARN); empty unless github_repository"
  value       = local.github_deploy ? aws_iam_role.github_deploy[0].arn : ""
}

output "dagster_db_endpoint" {
  description = "RDS PostgreSQL of Dagster (DAGSTER_PG_HOST); empty unless enable_dagster_on_aws"
  value       = local.dagster ? aws_db_instance.dagster[0].address : ""
}

output "dagster_db_master_secret_arn" {
  description = "RDS-managed master password secret (administrators only); empty unless enable_dagster_on_aws"
  value       = local.dagster ? aws_db_instance.dagster[0].master_user_secret[0].secret_arn : ""
}

output "dagster_ecs_cluster" {
  description = "ECS cluster running the Dagster webserver and daemon; empty unless enable_dagster_on_aws"
  value       = local.dagster ? aws_ecs_cluster.dagster[0].name : ""
}

output "dagster_role_arn" {
  description = "Role the Dagster deployment runs as (ECS task role or assumed by your principal)"
  value       = aws_iam_role.dagster.arn
}

output "sns_topic_arn" {
  description = "DERMAOPS_SNS_TOPIC_ARN"
  value       = aws_sns_topic.alerts.arn
}

output "model_package_group_name" {
  description = "DERMAOPS_MODEL_PACKAGE_GROUP"
  value       = aws_sagemaker_model_package_group.classifier.model_package_group_name
}

output "ecr_repository_urls" {
  description = "Push custom images here if you do not use the AWS PyTorch framework images"
  value       = { for name, repo in aws_ecr_repository.images : name => repo.repository_url }
}

output "dashboard_name" {
  value = aws_cloudwatch_dashboard.dermaops.dashboard_name
}

output "dagster_env" {
  description = "Environment for DERMAOPS_BACKEND=aws (paste into the Dagster deployment)"
  value = join("\n", [
    "DERMAOPS_BACKEND=aws",
    "AWS_REGION=${var.region}",
    "DERMAOPS_BUCKET_PREFIX=${var.bucket_prefix}",
    "DERMAOPS_KMS_KEY_ID=${aws_kms_key.dermaops.arn}",
    "DERMAOPS_SAGEMAKER_ROLE_ARN=${aws_iam_role.sagemaker_execution.arn}",
    "DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN=${aws_iam_role.sagemaker_endpoint.arn}",
    "DERMAOPS_SNS_TOPIC_ARN=${aws_sns_topic.alerts.arn}",
    "DERMAOPS_MODEL_PACKAGE_GROUP=${var.model_package_group_name}",
    "DERMAOPS_ENDPOINT_NAME=${var.endpoint_name}",
    "DERMAOPS_VPC_SUBNETS=${join(",", aws_subnet.private[*].id)}",
    "DERMAOPS_VPC_SECURITY_GROUPS=${join(",", aws_security_group.sagemaker[*].id)}",
  ])
}
