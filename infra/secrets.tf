# Patient-id pseudonym salt (DERMAOPS_PSEUDONYM_SALT, read by dermaops_resources/ingestion.py).
#
# The secret is created EMPTY: Terraform never sees the value, so it is not in the state file
# (a `random_password` would be stored in plain text in state, and anyone who can read the state
# plus a patient id could recompute the pseudonyms). Set it once, after the first apply:
#
#   aws secretsmanager put-secret-value --secret-id "$(terraform output -raw pseudonym_salt_secret_arn)" \
#     --secret-string "$(openssl rand -hex 32)"
#
# Never rotate it automatically: a new salt gives every patient a new pseudonym, which splits
# lesions of one patient across train/test and breaks the lineage of existing data.

resource "aws_secretsmanager_secret" "pseudonym_salt" {
  #checkov:skip=CKV2_AWS_57:Rotation would re-key every patient pseudonym; the salt is set once (see above)
  name                    = "dermaops/pseudonym-salt"
  description             = "DermaOps patient-id pseudonym salt (DERMAOPS_PSEUDONYM_SALT); set once, never rotated"
  kms_key_id              = aws_kms_key.dermaops.arn
  recovery_window_in_days = 30
}

# Only the identity that runs ingestion may read it: the Dagster role (statement
# ReadPseudonymSalt in main.tf) and, with enable_dagster_on_aws, the ECS task execution role that
# injects it into the Dagster containers. The resource policy denies everyone else in the account.
data "aws_iam_policy_document" "pseudonym_salt" {
  statement {
    sid       = "OnlyIngestionReads"
    effect    = "Deny"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "StringNotEquals"
      variable = "aws:PrincipalArn"
      values   = local.salt_readers
    }
  }
}

locals {
  salt_readers = concat(
    [aws_iam_role.dagster.arn],
    var.enable_dagster_on_aws ? [aws_iam_role.ecs_execution[0].arn] : [],
  )
}

resource "aws_secretsmanager_secret_policy" "pseudonym_salt" {
  secret_arn = aws_secretsmanager_secret.pseudonym_salt.arn
  policy     = data.aws_iam_policy_document.pseudonym_salt.json
}
