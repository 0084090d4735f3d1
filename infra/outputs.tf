output "kms_key_arn" {
  description = "DERMAOPS_KMS_KEY_ID"
  value       = aws_kms_key.dermaops.arn
}

output "bucket_names" {
  description = "Logical bucket -> S3 bucket (DERMAOPS_<RAW|PROCESSED|MODELS|LOGS>_BUCKET)"
  value       = { for b, bucket in aws_s3_bucket.store : b => bucket.bucket }
}

output "sagemaker_execution_role_arn" {
  description = "DERMAOPS_SAGEMAKER_ROLE_ARN"
  value       = aws_iam_role.sagemaker_execution.arn
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
    "DERMAOPS_SNS_TOPIC_ARN=${aws_sns_topic.alerts.arn}",
    "DERMAOPS_MODEL_PACKAGE_GROUP=${var.model_package_group_name}",
    "DERMAOPS_ENDPOINT_NAME=${var.endpoint_name}",
  ])
}
