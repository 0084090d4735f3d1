# GitHub Actions delivery (.github/workflows/cd.yml): on a `v*` tag the workflow assumes
# `dermaops-github-deploy` through GitHub's OIDC provider (no stored AWS keys), pushes the two
# images to ECR and runs `terraform plan -refresh=false` against a named workspace.
# Created only when `github_repository` is set ("owner/name").
#
# Least privilege: push to the two DermaOps ECR repositories, pull the AWS PyTorch base images,
# read the Terraform state object of the workspace and take/release its lock. The plan runs
# without refresh, so the role needs no read access to the deployed resources (and none to
# patient data); run a refreshing plan or apply with an operator's credentials.

locals {
  github_deploy = var.github_repository != ""
  github_oidc_provider_arn = (
    var.github_oidc_provider_arn != "" ? var.github_oidc_provider_arn :
    (local.github_deploy ? aws_iam_openid_connect_provider.github[0].arn : "")
  )
  # S3 backend: workspace states live at <workspace_key_prefix>/<workspace>/<key>.
  state_object = "${var.terraform_state_workspace_key_prefix}/${var.terraform_workspace}/${var.terraform_state_key}"
}

resource "aws_iam_openid_connect_provider" "github" {
  count           = local.github_deploy && var.github_oidc_provider_arn == "" ? 1 : 0
  url             = "https://token.actions.githubusercontent.com"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
}

data "aws_iam_policy_document" "github_deploy_assume" {
  count = local.github_deploy ? 1 : 0

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    # Only workflows of this repository running for a version tag.
    condition {
      test     = "StringLike"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${var.github_repository}:ref:refs/tags/v*"]
    }
  }
}

resource "aws_iam_role" "github_deploy" {
  count                = local.github_deploy ? 1 : 0
  name                 = "dermaops-github-deploy"
  assume_role_policy   = data.aws_iam_policy_document.github_deploy_assume[0].json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "github_deploy" {
  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushDermaOpsImages"
    actions = [
      "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
      "ecr:DescribeImages",
    ]
    resources = [for r in aws_ecr_repository.images : r.arn]
  }

  statement {
    sid       = "PullAwsPyTorchBaseImages"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [local.dlc_repos]
  }

  statement {
    sid       = "ListStateOfWorkspace"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${var.terraform_state_bucket}"]
    # init lists the workspaces (<prefix>/) to select TF_WORKSPACE; plan reads one state object.
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.terraform_state_workspace_key_prefix}/", "${var.terraform_state_workspace_key_prefix}/*", var.terraform_state_key]
    }
  }

  statement {
    sid       = "ReadStateOfWorkspace"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${var.terraform_state_bucket}/${local.state_object}"]
  }

  # S3-native state locking (backend `use_lockfile = true`, Terraform >= 1.10).
  statement {
    sid       = "StateLock"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["arn:${local.partition}:s3:::${var.terraform_state_bucket}/${local.state_object}.tflock"]
  }

  statement {
    sid       = "AvailabilityZonesForPlan"
    actions   = ["ec2:DescribeAvailabilityZones"]
    resources = ["*"]
  }

  dynamic "statement" {
    for_each = var.terraform_state_kms_key_arn != "" ? [1] : []
    content {
      sid       = "DecryptState"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [var.terraform_state_kms_key_arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.via["s3"]]
      }
    }
  }
}

resource "aws_iam_role_policy" "github_deploy" {
  count  = local.github_deploy ? 1 : 0
  name   = "dermaops-github-deploy"
  role   = aws_iam_role.github_deploy[0].id
  policy = data.aws_iam_policy_document.github_deploy.json
}
