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

  # Buckets holding patient data (images, metadata, captured requests): audited by CloudTrail
  # data events and S3 server access logs.
  phi_buckets = toset(["raw", "processed", "logs"])

  sm_arn = "arn:${local.partition}:sagemaker:${var.region}:${local.account}"
  # AWS Deep Learning Containers (PyTorch framework images) live in this account.
  dlc_repos = "arn:${local.partition}:ecr:${var.region}:763104351884:repository/pytorch-*"

  # Prefixes the application writes (dermaops_assets/training.py, dermaops_resources/aws/endpoint.py):
  # training checkpoints in the models bucket, model packages (content-addressed model.tar.gz)
  # in the models bucket, endpoint data capture in the logs bucket.
  checkpoint_prefix = "checkpoints/"
  package_prefix    = "sha256/"
  capture_prefix    = "datacapture/"

  # kms:ViaService values: the roles may use the key only through these services, never directly.
  via = { for s in ["s3", "sagemaker", "ec2", "sns", "secretsmanager", "ecr", "logs"] : s => "${s}.${var.region}.amazonaws.com" }

  trail_name = "dermaops-audit"
  trail_arn  = "arn:${local.partition}:cloudtrail:${var.region}:${local.account}:trail/${local.trail_name}"
}

# ---------------------------------------------------------------------------------------
# KMS: one customer key for buckets, job volumes/outputs, endpoint capture, SNS, logs.
# ---------------------------------------------------------------------------------------
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:Key policy: "*" means this key only; the account root statement is AWS's default delegation to IAM policies
  #checkov:skip=CKV_AWS_111:Key policy: "*" means this key only; service statements are limited by source account or encryption context
  #checkov:skip=CKV_AWS_356:Key policy: "*" is the only resource a key policy can name (the key itself)
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
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
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
      values = [
        "arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/*",
        "arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/dermaops/*",
      ]
    }
  }

  dynamic "statement" {
    for_each = local.create_trail ? [1] : []
    content {
      sid       = "CloudTrailEncryptsLogs"
      actions   = ["kms:GenerateDataKey*"]
      resources = ["*"]
      principals {
        type        = "Service"
        identifiers = ["cloudtrail.amazonaws.com"]
      }
      condition {
        test     = "StringLike"
        variable = "kms:EncryptionContext:aws:cloudtrail:arn"
        values   = ["arn:${local.partition}:cloudtrail:*:${local.account}:trail/*"]
      }
      condition {
        test     = "StringEquals"
        variable = "aws:SourceArn"
        values   = [local.trail_arn]
      }
    }
  }

  dynamic "statement" {
    for_each = local.create_trail ? [1] : []
    content {
      sid       = "CloudTrailDescribesKey"
      actions   = ["kms:DescribeKey"]
      resources = ["*"]
      principals {
        type        = "Service"
        identifiers = ["cloudtrail.amazonaws.com"]
      }
      condition {
        test     = "StringEquals"
        variable = "aws:SourceArn"
        values   = [local.trail_arn]
      }
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
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 event notifications; Dagster sensors poll the landing prefixes
  #checkov:skip=CKV_AWS_144:Single-region deployment; cross-region replication of patient data needs a data-residency decision first
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

# S3 server access logs of every store bucket (the three holding patient data and the models)
# go to the dedicated access-log bucket (audit.tf), one prefix per bucket.
resource "aws_s3_bucket_logging" "store" {
  for_each      = local.buckets
  bucket        = aws_s3_bucket.store[each.key].id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3/${local.names[each.key]}/"
}

# Lifecycle, on every bucket: unpublished writes of the atomic publish (`_tmp/`) expire after a
# day; failed multipart uploads are aborted; old versions expire; delete markers left without
# versions are removed.

# Raw and processed data: keep noncurrent versions 90 days.
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
    expiration {
      expired_object_delete_marker = true
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
  }
}

# Models: old job artifacts move to Intelligent-Tiering, then Glacier Instant Retrieval
# (a rollback can still read them in milliseconds). Training checkpoints (only needed to
# resume an interrupted spot job) expire.
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
    id     = "training-checkpoints"
    status = "Enabled"
    filter {
      prefix = local.checkpoint_prefix
    }
    expiration {
      days = var.checkpoint_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
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
  }

  rule {
    id     = "housekeeping"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    expiration {
      expired_object_delete_marker = true
    }
    noncurrent_version_expiration {
      noncurrent_days = 365
    }
  }
}

# Logs (data capture, inference log, alerts): `logs_retention_days`.
resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket     = aws_s3_bucket.store["logs"].id
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

  rule {
    id     = "delete-markers"
    status = "Enabled"
    filter {}
    expiration {
      expired_object_delete_marker = true
    }
  }
}

# ---------------------------------------------------------------------------------------
# SageMaker roles. Jobs (processing, training) run as `dermaops-sagemaker-execution`; the
# endpoint runs as `dermaops-sagemaker-endpoint`, which reads model packages and writes data
# capture and nothing else: no access to the raw or processed data.
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

resource "aws_iam_role" "sagemaker_endpoint" {
  name               = "dermaops-sagemaker-endpoint"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_assume.json
}

# What jobs and the orchestrator need of the data: the buckets' objects and the key that
# encrypts them, the key only through S3 and SageMaker (kms:ViaService),
# and only to decrypt and make data keys. One document, merged into both roles' policies.
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

  # Publishing writes a temporary key under _tmp/ and deletes it by version id, so no noncurrent
  # copy stays behind on the versioned buckets; only those temporary keys' versions.
  statement {
    sid       = "RemoveTemporaryVersions"
    actions   = ["s3:DeleteObjectVersion"]
    resources = [for arn in local.bucket_arns : "${arn}/_tmp/*"]
  }

  statement {
    sid       = "ListTemporaryVersions"
    actions   = ["s3:ListBucketVersions"]
    resources = local.bucket_arns
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["_tmp/*"]
    }
  }

  statement {
    sid       = "UseKeyThroughServices"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["s3"], local.via["sagemaker"]]
    }
  }
}

# SageMaker in the private subnets (enable_vpc): the service creates network interfaces as the
# role it runs with, in this VPC only.
data "aws_iam_policy_document" "sagemaker_vpc" {
  statement {
    sid = "DescribeNetwork"
    actions = [
      "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
      "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
    ]
    resources = ["*"]
  }

  statement {
    sid = "NetworkInterfacesInDermaOpsVpc"
    actions = [
      "ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
      "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
    ]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ec2:Vpc"
      values   = [var.enable_vpc ? aws_vpc.dermaops[0].arn : "arn:${local.partition}:ec2:${var.region}:${local.account}:vpc/none"]
    }
  }
}

data "aws_iam_policy_document" "sagemaker_execution" {
  source_policy_documents = concat(
    [data.aws_iam_policy_document.store_access.json],
    var.enable_vpc ? [data.aws_iam_policy_document.sagemaker_vpc.json] : [],
  )

  statement {
    sid       = "EncryptJobVolumes"
    actions   = ["kms:CreateGrant"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
    # Volume encryption: SageMaker creates the grant, for EC2/EBS to use.
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["sagemaker"], local.via["ec2"]]
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
    resources = [aws_ecr_repository.images["dermaops-training"].arn, local.dlc_repos]
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

# The endpoint: model packages (models bucket, `sha256/`) in, data capture (logs bucket,
# `datacapture/`) out. Nothing on the raw or processed buckets (tests/infra checks this).
data "aws_iam_policy_document" "sagemaker_endpoint" {
  source_policy_documents = var.enable_vpc ? [data.aws_iam_policy_document.sagemaker_vpc.json] : []

  statement {
    sid       = "ListModelPackages"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.store["models"].arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.package_prefix}*"]
    }
  }

  statement {
    sid       = "ReadModelPackages"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.store["models"].arn}/${local.package_prefix}*"]
  }

  statement {
    sid       = "WriteDataCapture"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.store["logs"].arn}/${local.capture_prefix}*"]
  }

  statement {
    sid       = "UseKeyForPackagesAndCapture"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["s3"], local.via["sagemaker"]]
    }
  }

  statement {
    sid       = "EncryptEndpointVolume"
    actions   = ["kms:CreateGrant"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
    # Volume encryption: SageMaker creates the grant, for EC2/EBS to use.
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["sagemaker"], local.via["ec2"]]
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
    resources = [aws_ecr_repository.images["dermaops-inference"].arn, local.dlc_repos]
  }

  statement {
    sid       = "EndpointLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/Endpoints/*"]
  }

  statement {
    sid       = "EndpointMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*"]
    }
  }
}

resource "aws_iam_role_policy" "sagemaker_endpoint" {
  name   = "dermaops-sagemaker-endpoint"
  role   = aws_iam_role.sagemaker_endpoint.id
  policy = data.aws_iam_policy_document.sagemaker_endpoint.json
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
  #checkov:skip=CKV_AWS_356:List/Describe calls without resource-level permissions; PutMetricData limited by namespace
  source_policy_documents = [data.aws_iam_policy_document.store_access.json]

  # Job names must start with `dermaops-` (dermaops_assets: dermaops-preprocess-*, dermaops-train-*,
  # dermaops-evaluate-*; tests/infra checks the scope).
  statement {
    sid = "Jobs"
    actions = [
      "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
      "sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob",
      "sagemaker:AddTags",
    ]
    resources = ["${local.sm_arn}:training-job/dermaops-*", "${local.sm_arn}:processing-job/dermaops-*"]
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

  # CreateEndpoint/UpdateEndpoint with an encrypted storage volume (endpoint config KmsKeyId):
  # SageMaker creates the grant as the caller.
  statement {
    sid       = "EncryptEndpointVolumes"
    actions   = ["kms:CreateGrant"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["sagemaker"], local.via["ec2"]]
    }
  }

  statement {
    sid       = "PassSageMakerRolesToSageMakerOnly"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.sagemaker_execution.arn, aws_iam_role.sagemaker_endpoint.arn]
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

  # Application Auto Scaling: the scalable target's ARN carries a generated id, not the endpoint
  # name, so writes are limited to SageMaker variant instance counts in this account and region.
  # Describe* calls have no resource-level permissions.
  statement {
    sid = "EndpointAutoScaling"
    actions = [
      "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:PutScalingPolicy", "application-autoscaling:DeleteScalingPolicy",
    ]
    resources = ["arn:${local.partition}:application-autoscaling:${var.region}:${local.account}:scalable-target/*"]
    condition {
      test     = "StringEquals"
      variable = "application-autoscaling:service-namespace"
      values   = ["sagemaker"]
    }
    condition {
      test     = "StringEquals"
      variable = "application-autoscaling:scalable-dimension"
      values   = ["sagemaker:variant:DesiredInstanceCount"]
    }
  }

  statement {
    sid = "EndpointAutoScalingRead"
    actions = [
      "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "AutoScalingServiceLinkedRole"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["arn:${local.partition}:iam::${local.account}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/*"]
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

  # Ingestion (dermaops_assets/ingestion.py) runs in the Dagster run process and pseudonymises
  # patient ids with this salt (DERMAOPS_PSEUDONYM_SALT).
  statement {
    sid       = "UseKeyForAlertsAndSalt"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["sns"], local.via["secretsmanager"]]
    }
  }

  statement {
    sid       = "ReadPseudonymSalt"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [aws_secretsmanager_secret.pseudonym_salt.arn]
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
  #checkov:skip=CKV_AWS_338:Job and endpoint logs are operational (logs_retention_days, 30 by default); the audit record is CloudTrail
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
          # DermaOps/EndpointErrors and EndpointLatencyMs come from the local endpoint only; on AWS
          # SageMaker's Invocation5XXErrors and ModelLatency (next widget) are the endpoint's health.
          title  = "Drift score and live balanced accuracy"
          region = var.region
          metrics = [
            ["DermaOps", "DriftScore", { stat = "Maximum", period = 3600 }],
            ["DermaOps", "LiveBalancedAccuracy", { stat = "Minimum", period = 3600, yAxis = "right" }],
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
