# Audit: who read or changed patient data, and who used the key.
#
# - S3 server access logs of the store buckets go to `<prefix>-access-logs`.
# - A CloudTrail trail (unless `create_cloudtrail = false` because an organisation trail
#   already covers the account: pass its ARN as `existing_trail_arn`) records management events
#   (KMS included) and S3 data events on the raw, processed and logs buckets, KMS-encrypted,
#   with log file validation, into `<prefix>-cloudtrail`.

locals {
  create_trail = var.create_cloudtrail && var.existing_trail_arn == ""
  audit_trail  = local.create_trail ? aws_cloudtrail.dermaops[0].arn : var.existing_trail_arn
}

# ---------------------------------------------------------------------------------------
# Access-log bucket. S3 server access logging only delivers to buckets with SSE-S3 default
# encryption (SSE-KMS is not supported for the target bucket), hence AES256 here.
# ---------------------------------------------------------------------------------------
resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_145:S3 server access logging cannot deliver to an SSE-KMS bucket; SSE-S3 is used
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of the access-log bucket
  #checkov:skip=CKV_AWS_144:Single-region deployment; audit logs stay in the region of the data
  bucket = "${var.bucket_prefix}-access-logs"
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

data "aws_iam_policy_document" "access_logs" {
  statement {
    sid       = "S3ServerAccessLogsDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/s3/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = concat(local.bucket_arns, [for b in aws_s3_bucket.cloudtrail : b.arn])
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.access_logs.arn, "${aws_s3_bucket.access_logs.arn}/*"]
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

resource "aws_s3_bucket_policy" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  policy     = data.aws_iam_policy_document.access_logs.json
  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  depends_on = [aws_s3_bucket_versioning.access_logs]

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
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.audit_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
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
# CloudTrail bucket and trail.
# ---------------------------------------------------------------------------------------
resource "aws_s3_bucket" "cloudtrail" {
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of the trail bucket
  #checkov:skip=CKV_AWS_144:Single-region deployment; audit logs stay in the region of the data
  count  = local.create_trail ? 1 : 0
  bucket = "${var.bucket_prefix}-cloudtrail"
}

resource "aws_s3_bucket_ownership_controls" "cloudtrail" {
  count  = local.create_trail ? 1 : 0
  bucket = aws_s3_bucket.cloudtrail[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "cloudtrail" {
  count                   = local.create_trail ? 1 : 0
  bucket                  = aws_s3_bucket.cloudtrail[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "cloudtrail" {
  count  = local.create_trail ? 1 : 0
  bucket = aws_s3_bucket.cloudtrail[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "cloudtrail" {
  count  = local.create_trail ? 1 : 0
  bucket = aws_s3_bucket.cloudtrail[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.dermaops.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "cloudtrail" {
  count         = local.create_trail ? 1 : 0
  bucket        = aws_s3_bucket.cloudtrail[0].id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3/${var.bucket_prefix}-cloudtrail/"
}

resource "aws_s3_bucket_lifecycle_configuration" "cloudtrail" {
  count      = local.create_trail ? 1 : 0
  bucket     = aws_s3_bucket.cloudtrail[0].id
  depends_on = [aws_s3_bucket_versioning.cloudtrail]

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
    id     = "expire-trail-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.audit_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
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

data "aws_iam_policy_document" "cloudtrail_bucket" {
  count = local.create_trail ? 1 : 0

  statement {
    sid       = "CloudTrailAclCheck"
    actions   = ["s3:GetBucketAcl"]
    resources = [aws_s3_bucket.cloudtrail[0].arn]
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

  statement {
    sid       = "CloudTrailWrite"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.cloudtrail[0].arn}/AWSLogs/${local.account}/*"]
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "s3:x-amz-acl"
      values   = ["bucket-owner-full-control"]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.cloudtrail[0].arn, "${aws_s3_bucket.cloudtrail[0].arn}/*"]
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

resource "aws_s3_bucket_policy" "cloudtrail" {
  count      = local.create_trail ? 1 : 0
  bucket     = aws_s3_bucket.cloudtrail[0].id
  policy     = data.aws_iam_policy_document.cloudtrail_bucket[0].json
  depends_on = [aws_s3_bucket_public_access_block.cloudtrail]
}

resource "aws_cloudtrail" "dermaops" {
  #checkov:skip=CKV_AWS_252:No SNS notification per log file; the trail is read on demand (audits, investigations)
  #checkov:skip=CKV2_AWS_10:Not streamed to CloudWatch Logs: S3 with log file validation is the audit record; add a log group if API alerting is wanted
  count                         = local.create_trail ? 1 : 0
  name                          = local.trail_name
  s3_bucket_name                = aws_s3_bucket.cloudtrail[0].id
  kms_key_id                    = aws_kms_key.dermaops.arn
  enable_log_file_validation    = true
  include_global_service_events = true
  is_multi_region_trail         = true
  depends_on                    = [aws_s3_bucket_policy.cloudtrail]

  # All management events, KMS ones (Decrypt, GenerateDataKey, key policy changes) included.
  advanced_event_selector {
    name = "Management events, KMS included"
    field_selector {
      field  = "eventCategory"
      equals = ["Management"]
    }
  }

  # Object-level reads and writes on the buckets holding patient data.
  advanced_event_selector {
    name = "S3 data events on the patient-data buckets"
    field_selector {
      field  = "eventCategory"
      equals = ["Data"]
    }
    field_selector {
      field  = "resources.type"
      equals = ["AWS::S3::Object"]
    }
    field_selector {
      field       = "resources.ARN"
      starts_with = [for b in local.phi_buckets : "${aws_s3_bucket.store[b].arn}/"]
    }
  }
}
