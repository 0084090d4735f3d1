# Private network for SageMaker jobs, the endpoint and (enable_dagster_on_aws) Dagster on ECS.
# OFF by default (`enable_vpc = false`): without it SageMaker runs in its own managed network.
#
# Private subnets only, no internet or NAT gateway: AWS APIs are reached through VPC endpoints
# (S3 gateway; SageMaker API and runtime, CloudWatch Logs and monitoring, KMS and, for Dagster,
# STS, ECR, Secrets Manager, SNS, ECS, EC2 and Application Auto Scaling interface endpoints).
# Feed the outputs `vpc_subnet_ids` and `vpc_security_group_ids` into DERMAOPS_VPC_SUBNETS and
# DERMAOPS_VPC_SECURITY_GROUPS (comma-separated; `dagster_env` prints both).

locals {
  azs = var.enable_vpc ? slice(data.aws_availability_zones.available[0].names, 0, var.vpc_az_count) : []

  # SageMaker API/runtime, CloudWatch Logs/metrics, KMS: what the jobs and endpoint need. STS,
  # ECR, Secrets Manager, SNS, ECS, EC2 and Application Auto Scaling: what Dagster on ECS calls
  # (image pulls, the salt, alerts, the EcsRunLauncher, endpoint auto-scaling).
  interface_endpoints = toset([
    "sagemaker.api", "sagemaker.runtime", "logs", "monitoring", "kms", "sts",
    "ecr.api", "ecr.dkr", "secretsmanager", "sns", "ecs", "ec2", "application-autoscaling",
  ])
}

data "aws_availability_zones" "available" {
  count = var.enable_vpc ? 1 : 0
  state = "available"
}

resource "aws_vpc" "dermaops" {
  count                = var.enable_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "dermaops" }
}

# The default security group allows nothing.
resource "aws_default_security_group" "dermaops" {
  count  = var.enable_vpc ? 1 : 0
  vpc_id = aws_vpc.dermaops[0].id
}

resource "aws_subnet" "private" {
  count                   = length(local.azs)
  vpc_id                  = aws_vpc.dermaops[0].id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = false
  tags                    = { Name = "dermaops-private-${local.azs[count.index]}" }
}

resource "aws_route_table" "private" {
  count  = var.enable_vpc ? 1 : 0
  vpc_id = aws_vpc.dermaops[0].id
  tags   = { Name = "dermaops-private" }
}

resource "aws_route_table_association" "private" {
  count          = length(aws_subnet.private)
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[0].id
}

# VPC flow logs (KMS-encrypted log group).
resource "aws_cloudwatch_log_group" "flow_logs" {
  #checkov:skip=CKV_AWS_338:Flow logs are kept logs_retention_days (30 by default); CloudTrail is the long-term audit record
  count             = var.enable_vpc ? 1 : 0
  name              = "/dermaops/vpc-flow-logs"
  retention_in_days = var.logs_retention_days
  kms_key_id        = aws_kms_key.dermaops.arn
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  count              = var.enable_vpc ? 1 : 0
  name               = "dermaops-vpc-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

data "aws_iam_policy_document" "flow_logs" {
  count = var.enable_vpc ? 1 : 0
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow_logs[0].arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  count  = var.enable_vpc ? 1 : 0
  name   = "dermaops-vpc-flow-logs"
  role   = aws_iam_role.flow_logs[0].id
  policy = data.aws_iam_policy_document.flow_logs[0].json
}

resource "aws_flow_log" "dermaops" {
  count           = var.enable_vpc ? 1 : 0
  vpc_id          = aws_vpc.dermaops[0].id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn    = aws_iam_role.flow_logs[0].arn
}

# SageMaker jobs and endpoint: talk to each other (distributed training) and to the endpoints.
resource "aws_security_group" "sagemaker" {
  count       = var.enable_vpc ? 1 : 0
  name        = "dermaops-sagemaker"
  description = "DermaOps SageMaker jobs and endpoint (DERMAOPS_VPC_SECURITY_GROUPS)"
  vpc_id      = aws_vpc.dermaops[0].id

  ingress {
    description = "Between the instances of one job (distributed training)"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    self        = true
  }

  egress {
    description = "Between the instances of one job (distributed training)"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    self        = true
  }

  egress {
    description = "HTTPS to the interface VPC endpoints"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description     = "HTTPS to S3 through the gateway endpoint"
    from_port       = 443
    to_port         = 443
    protocol        = "tcp"
    prefix_list_ids = [aws_vpc_endpoint.s3[0].prefix_list_id]
  }
}

resource "aws_security_group" "vpc_endpoints" {
  count       = var.enable_vpc ? 1 : 0
  name        = "dermaops-vpc-endpoints"
  description = "Interface VPC endpoints: HTTPS from inside the DermaOps VPC"
  vpc_id      = aws_vpc.dermaops[0].id

  ingress {
    description = "HTTPS from the VPC"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
}

# S3 gateway endpoint, limited to this account's buckets and the bucket ECR serves image
# layers from.
data "aws_iam_policy_document" "s3_endpoint" {
  count = var.enable_vpc ? 1 : 0

  statement {
    sid       = "DermaOpsBuckets"
    actions   = ["s3:*"]
    resources = ["arn:${local.partition}:s3:::${var.bucket_prefix}-*", "arn:${local.partition}:s3:::${var.bucket_prefix}-*/*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:PrincipalAccount"
      values   = [local.account]
    }
  }

  statement {
    sid       = "EcrImageLayers"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::prod-${var.region}-starport-layer-bucket/*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
  }
}

resource "aws_vpc_endpoint" "s3" {
  count             = var.enable_vpc ? 1 : 0
  vpc_id            = aws_vpc.dermaops[0].id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private[0].id]
  policy            = data.aws_iam_policy_document.s3_endpoint[0].json
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = var.enable_vpc ? local.interface_endpoints : toset([])
  vpc_id              = aws_vpc.dermaops[0].id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.vpc_endpoints[0].id]
}
