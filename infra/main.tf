# DermaOps on AWS: storage, encryption, identities, registry, images, alerting.
#
# CloudWatch *alarms* are deliberately not here: the application creates them
# (CloudWatchMetrics.ensure_alarms, from dermaops_resources/metrics.py ALARMS) so the
# thresholds live in one place for the local and AWS backends. See README.md.

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ project = "dermaops", environment = var.environment }, var.tags)
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  buckets   = toset(["raw", "processed", "models", "logs"])
  names     = { for b in local.buckets : b => "${var.bucket_prefix}-${b}" }

  bucket_arns = [for b in local.buckets : aws_s3_bucket.store[b].arn]
  object_arns = [for b in local.buckets : "${aws_s3_bucket.store[b].arn}/*"]

  sm_arn = "arn:${local.partition}:sagemaker:${var.region}:${local.account}"
  # AWS Deep Learning Containers (PyTorch framework images) live in this account.
  dlc_repos = "arn:${local.partition}:ecr:${var.region}:763104351884:repository/pytorch-*"
}

# ---------------------------------------------------------------------------------------
# KMS: one customer key for buckets, job volumes/outputs, endpoint capture, SNS, logs.
# ---------------------------------------------------------------------------------------
data "aws_iam_policy_document" "kms" {
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "AlarmsPublishToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com", "sns.amazonaws.com"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/*"]
    }
  }
}

resource "aws_kms_key" "dermaops" {
  description             = "DermaOps: dermoscopy images, models, captured inferences"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "dermaops" {
  name          = "alias/dermaops"
  target_key_id = aws_kms_key.dermaops.key_id
}

# ---------------------------------------------------------------------------------------
# S3: raw, processed, models, logs.
# ---------------------------------------------------------------------------------------
resource "aws_s3_bucket" "store" {
  for_each = local.buckets
  bucket   = local.names[each.key]
}

resource "aws_s3_bucket_ownership_controls" "store" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.store[each.key].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "store" {
  for_each                = local.buckets
  bucket                  = aws_s3_bucket.store[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "store" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.store[each.key].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "store" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.store[each.key].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.dermaops.arn
    }
    bucket_key_enabled = true
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.buckets

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.store[each.key].arn, "${aws_s3_bucket.store[each.key].arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "store" {
  for_each   = local.buckets
  bucket     = aws_s3_bucket.store[each.key].id
  policy     = data.aws_iam_policy_document.tls_only[each.key].json
  depends_on = [aws_s3_bucket_public_access_block.store]
}

# Raw and processed data: keep noncurrent versions 90 days; clean failed uploads.
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  for_each   = toset(["raw", "processed"])
  bucket     = aws_s3_bucket.store[each.key].id
  depends_on = [aws_s3_bucket_versioning.store]

  rule {
    id     = "unpublished-writes"
    status = "Enabled"
    filter {
      prefix = "_tmp/"
    }
    expiration {
      days = 1
    }
  }

  rule {
    id     = "housekeeping"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
  }
}

# Models: old job artifacts move to Intelligent-Tiering, then Glacier Instant Retrieval
# (a rollback can still read them in milliseconds).
resource "aws_s3_bucket_lifecycle_configuration" "models" {
  bucket     = aws_s3_bucket.store["models"].id
  depends_on = [aws_s3_bucket_versioning.store]

  rule {
    id     = "unpublished-writes"
    status = "Enabled"
    filter {
      prefix = "_tmp/"
    }
    expiration {
      days = 1
    }
  }

  rule {
    id     = "old-model-artifacts"
    status = "Enabled"
    filter {
      prefix = "jobs/"
    }
    transition {
      days          = 30
      storage_class = "INTELLIGENT_TIERING"
    }
    transition {
      days          = 180
      storage_class = "GLACIER_IR"
    }
    noncurrent_version_transition {
      noncurrent_days = 30
      storage_class   = "GLACIER"
    }
    noncurrent_version_expiration {
      noncurrent_days = 365
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# Logs (data capture, alerts): 30 days.
resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket     = aws_s3_bucket.store["logs"].id
  depends_on = [aws_s3_bucket_versioning.store]

  rule {
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.logs_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

# ---------------------------------------------------------------------------------------
# SageMaker execution role: what training/processing jobs and the endpoint may touch.
# ---------------------------------------------------------------------------------------
data "aws_iam_policy_document" "sagemaker_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "sagemaker_execution" {
  name               = "dermaops-sagemaker-execution"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_assume.json
}

# What both roles need of the data: the buckets' objects and the key that encrypts them.
# One document, merged into each role's policy, so the two cannot drift apart.
data "aws_iam_policy_document" "store_access" {
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = local.bucket_arns
  }

  statement {
    sid       = "ReadWriteObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = local.object_arns
  }

  statement {
    sid       = "UseKey"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = [aws_kms_key.dermaops.arn]
  }
}

data "aws_iam_policy_document" "sagemaker_execution" {
  source_policy_documents = [data.aws_iam_policy_document.store_access.json]

  statement {
    sid       = "EncryptJobVolumes"
    actions   = ["kms:CreateGrant"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
  }

  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "EcrPull"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = concat([for r in aws_ecr_repository.images : r.arn], [local.dlc_repos])
  }

  statement {
    sid       = "JobLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/*"]
  }

  statement {
    sid       = "JobMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*", "DermaOps"]
    }
  }
}

resource "aws_iam_role_policy" "sagemaker_execution" {
  name   = "dermaops-sagemaker-execution"
  role   = aws_iam_role.sagemaker_execution.id
  policy = data.aws_iam_policy_document.sagemaker_execution.json
}

# ---------------------------------------------------------------------------------------
# Dagster deployment role: orchestrates jobs, registry, endpoint, alarms, notifications.
# ---------------------------------------------------------------------------------------
data "aws_iam_policy_document" "dagster_assume" {
  dynamic "statement" {
    for_each = length(var.dagster_trusted_principal_arns) > 0 ? [1] : []
    content {
      actions = ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = var.dagster_trusted_principal_arns
      }
    }
  }

  dynamic "statement" {
    for_each = var.dagster_on_ecs ? [1] : []
    content {
      actions = ["sts:AssumeRole"]
      principals {
        type        = "Service"
        identifiers = ["ecs-tasks.amazonaws.com"]
      }
      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [local.account]
      }
    }
  }
}

resource "aws_iam_role" "dagster" {
  name               = "dermaops-dagster"
  assume_role_policy = data.aws_iam_policy_document.dagster_assume.json
}

data "aws_iam_policy_document" "dagster" {
  source_policy_documents = [data.aws_iam_policy_document.store_access.json]

  statement {
    sid = "Jobs"
    actions = [
      "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
      "sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob",
      "sagemaker:AddTags",
    ]
    resources = ["${local.sm_arn}:training-job/*", "${local.sm_arn}:processing-job/*"]
  }

  statement {
    sid = "ModelRegistry"
    actions = [
      "sagemaker:CreateModelPackageGroup", "sagemaker:DescribeModelPackageGroup", "sagemaker:CreateModelPackage",
      "sagemaker:DescribeModelPackage", "sagemaker:UpdateModelPackage", "sagemaker:AddTags",
    ]
    resources = [
      "${local.sm_arn}:model-package-group/${var.model_package_group_name}",
      "${local.sm_arn}:model-package/${var.model_package_group_name}/*",
    ]
  }

  statement {
    sid = "Endpoint"
    actions = [
      "sagemaker:CreateModel", "sagemaker:DescribeModel", "sagemaker:DeleteModel",
      "sagemaker:CreateEndpointConfig", "sagemaker:DescribeEndpointConfig", "sagemaker:DeleteEndpointConfig",
      "sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoint",
      "sagemaker:DeleteEndpoint", "sagemaker:InvokeEndpoint", "sagemaker:AddTags", "sagemaker:ListTags",
    ]
    resources = [
      "${local.sm_arn}:endpoint/${var.endpoint_name}",
      "${local.sm_arn}:endpoint-config/${substr(var.endpoint_name, 0, 36)}-*",
      "${local.sm_arn}:model/${substr(var.endpoint_name, 0, 36)}-*",
    ]
  }

  statement {
    sid       = "PassExecutionRoleToSageMakerOnly"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.sagemaker_execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }

  statement {
    sid       = "FollowJobLogs"
    actions   = ["logs:DescribeLogStreams", "logs:GetLogEvents"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/*"]
  }

  statement {
    sid = "EndpointAutoScaling"
    actions = [
      "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:PutScalingPolicy", "application-autoscaling:DescribeScalableTargets",
      "application-autoscaling:DescribeScalingPolicies",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "AutoScalingServiceLinkedRole"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["sagemaker.application-autoscaling.amazonaws.com"]
    }
  }

  statement {
    sid       = "Metrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["DermaOps"]
    }
  }

  statement {
    sid       = "ListWithoutResourceLevelPermissions"
    actions   = ["sagemaker:ListModelPackages", "cloudwatch:DescribeAlarms"]
    resources = ["*"]
  }

  statement {
    sid       = "Alarms"
    actions   = ["cloudwatch:PutMetricAlarm", "cloudwatch:SetAlarmState"]
    resources = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account}:alarm:dermaops-*"]
  }

  statement {
    sid       = "Notify"
    actions   = ["sns:Publish", "sns:CreateTopic", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.alerts.arn]
  }
}

resource "aws_iam_role_policy" "dagster" {
  name   = "dermaops-dagster"
  role   = aws_iam_role.dagster.id
  policy = data.aws_iam_policy_document.dagster.json
}

# ---------------------------------------------------------------------------------------
# Registry, images, logs, alerting, dashboard.
# ---------------------------------------------------------------------------------------
resource "aws_sagemaker_model_package_group" "classifier" {
  model_package_group_name        = var.model_package_group_name
  model_package_group_description = "DermaOps skin-lesion classifier (HAM10000 classes)"
}

resource "aws_ecr_repository" "images" {
  for_each             = toset(["dermaops-training", "dermaops-inference"])
  name                 = each.key
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.dermaops.arn
  }
}

resource "aws_ecr_lifecycle_policy" "images" {
  for_each   = aws_ecr_repository.images
  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the 20 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 20 }
      action       = { type = "expire" }
    }]
  })
}

resource "aws_cloudwatch_log_group" "sagemaker" {
  for_each          = toset(["/aws/sagemaker/TrainingJobs", "/aws/sagemaker/ProcessingJobs", "/aws/sagemaker/Endpoints/${var.endpoint_name}"])
  name              = each.key
  retention_in_days = var.logs_retention_days
  kms_key_id        = aws_kms_key.dermaops.arn
}

resource "aws_sns_topic" "alerts" {
  name              = var.alerts_topic_name
  kms_master_key_id = aws_kms_key.dermaops.arn
}

data "aws_iam_policy_document" "alerts" {
  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alerts.arn]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }

  statement {
    sid       = "AccountManages"
    actions   = ["sns:Publish", "sns:Subscribe", "sns:GetTopicAttributes", "sns:SetTopicAttributes"]
    resources = [aws_sns_topic.alerts.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }
}

resource "aws_sns_topic_policy" "alerts" {
  arn    = aws_sns_topic.alerts.arn
  policy = data.aws_iam_policy_document.alerts.json
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alert_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = var.alert_email
}

resource "aws_cloudwatch_dashboard" "dermaops" {
  dashboard_name = "dermaops"
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title  = "Endpoint errors and latency (app metrics)"
          region = var.region
          metrics = [
            ["DermaOps", "EndpointErrors", { stat = "Sum", period = 3600 }],
            ["DermaOps", "EndpointLatencyMs", { stat = "p95", period = 300, yAxis = "right" }],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title  = "SageMaker endpoint traffic"
          region = var.region
          metrics = [
            ["AWS/SageMaker", "Invocations", "EndpointName", var.endpoint_name, "VariantName", "AllTraffic", { stat = "Sum" }],
            ["AWS/SageMaker", "Invocation5XXErrors", "EndpointName", var.endpoint_name, "VariantName", "AllTraffic", { stat = "Sum" }],
            ["AWS/SageMaker", "ModelLatency", "EndpointName", var.endpoint_name, "VariantName", "AllTraffic", { stat = "p95", yAxis = "right" }],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title  = "Model health: drift and accuracy drop"
          region = var.region
          metrics = [
            ["DermaOps", "DriftDetected", { stat = "Maximum", period = 3600 }],
            ["DermaOps", "AccuracyDropPoints", { stat = "Maximum", period = 3600, yAxis = "right" }],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title   = "Estimated monthly cost (USD)"
          region  = var.region
          metrics = [["DermaOps", "EstimatedMonthlyCostUSD", { stat = "Maximum", period = 86400 }]]
          annotations = {
            horizontal = [{ label = "budget", value = 500 }]
          }
        }
      },
    ]
  })
}
