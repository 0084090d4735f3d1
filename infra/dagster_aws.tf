# Dagster on AWS (`enable_dagster_on_aws`, default false; needs `enable_vpc = true` and a
# `dagster_image`): ECS Fargate services for the webserver and the daemon, runs launched as ECS
# tasks by the EcsRunLauncher, run/event-log/schedule storage in a private, encrypted RDS
# PostgreSQL, compute logs in the logs bucket. The instance config is deploy/dagster.aws.yaml.
#
# Database credentials: the master password is created and kept by RDS in Secrets Manager
# (`manage_master_user_password`, encrypted with the DermaOps key) and is for administrators
# only. Dagster connects as `dagster_db_app_user` with IAM database authentication: dagster-postgres
# (`auth_provider: aws_wif`) fetches a 15-minute token as the task role, so no password sits in
# the containers and the master secret can rotate freely. One-time step after the first apply:
# see infra/README.md ("Dagster on AWS").

locals {
  dagster         = var.enable_dagster_on_aws
  dagster_log     = "/dermaops/dagster"
  dagster_db_name = "dagster"
}

resource "aws_ecs_cluster" "dagster" {
  count = local.dagster ? 1 : 0
  name  = "dermaops-dagster"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  lifecycle {
    precondition {
      condition     = var.enable_vpc && var.dagster_image != ""
      error_message = "enable_dagster_on_aws needs enable_vpc = true (private subnets) and dagster_image."
    }
  }
}

resource "aws_cloudwatch_log_group" "dagster" {
  #checkov:skip=CKV_AWS_338:Dagster service logs are operational (logs_retention_days); run history is in PostgreSQL
  count             = local.dagster ? 1 : 0
  name              = local.dagster_log
  retention_in_days = var.logs_retention_days
  kms_key_id        = aws_kms_key.dermaops.arn
}

# ---------------------------------------------------------------------------------------
# ECS task execution role: pull the image, write container logs, inject the salt.
# ---------------------------------------------------------------------------------------
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
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

resource "aws_iam_role" "ecs_execution" {
  count              = local.dagster ? 1 : 0
  name               = "dermaops-dagster-ecs-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "ecs_execution" {
  count = local.dagster ? 1 : 0

  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullDagsterImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = ["arn:${local.partition}:ecr:${var.region}:${local.account}:repository/dermaops-*"]
  }

  statement {
    sid       = "ContainerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.dagster[0].arn}:*"]
  }

  statement {
    sid       = "InjectPseudonymSalt"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.pseudonym_salt.arn]
  }

  statement {
    sid       = "DecryptSalt"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.dermaops.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.via["secretsmanager"]]
    }
  }
}

resource "aws_iam_role_policy" "ecs_execution" {
  count  = local.dagster ? 1 : 0
  name   = "dermaops-dagster-ecs-execution"
  role   = aws_iam_role.ecs_execution[0].id
  policy = data.aws_iam_policy_document.ecs_execution[0].json
}

# What the Dagster task role (aws_iam_role.dagster) needs on top of main.tf: launch runs as ECS
# tasks (EcsRunLauncher) and connect to the database with IAM auth.
data "aws_iam_policy_document" "dagster_ecs" {
  count = local.dagster ? 1 : 0

  statement {
    sid       = "RunLauncherTaskDefinitions"
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"]
    resources = ["*"]
  }

  statement {
    sid       = "RunLauncherTasks"
    actions   = ["ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks", "ecs:TagResource", "ecs:ListTagsForResource"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.dagster[0].arn]
    }
  }

  statement {
    sid       = "PassTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.dagster.arn, aws_iam_role.ecs_execution[0].arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "RunWorkerLogs"
    actions   = ["logs:GetLogEvents", "logs:DescribeLogStreams"]
    resources = [aws_cloudwatch_log_group.dagster[0].arn, "${aws_cloudwatch_log_group.dagster[0].arn}:*"]
  }

  statement {
    sid       = "DatabaseIamAuth"
    actions   = ["rds-db:connect"]
    resources = ["arn:${local.partition}:rds-db:${var.region}:${local.account}:dbuser:${aws_db_instance.dagster[0].resource_id}/${var.dagster_db_app_user}"]
  }
}

resource "aws_iam_role_policy" "dagster_ecs" {
  count  = local.dagster ? 1 : 0
  name   = "dermaops-dagster-ecs"
  role   = aws_iam_role.dagster.id
  policy = data.aws_iam_policy_document.dagster_ecs[0].json
}

# ---------------------------------------------------------------------------------------
# Network: Dagster tasks reach the database and the VPC endpoints; the database accepts only
# the Dagster tasks. The webserver has no public address and no load balancer: reach it over
# your VPN / Direct Connect (dagster_webserver_allowed_cidrs) or `aws ecs execute-command`.
# ---------------------------------------------------------------------------------------
resource "aws_security_group" "dagster" {
  count       = local.dagster ? 1 : 0
  name        = "dermaops-dagster"
  description = "DermaOps Dagster webserver, daemon and run tasks"
  vpc_id      = aws_vpc.dermaops[0].id
}

resource "aws_security_group" "dagster_db" {
  count       = local.dagster ? 1 : 0
  name        = "dermaops-dagster-db"
  description = "DermaOps Dagster PostgreSQL: only from the Dagster tasks"
  vpc_id      = aws_vpc.dermaops[0].id
}

resource "aws_vpc_security_group_egress_rule" "dagster_https" {
  count             = local.dagster ? 1 : 0
  security_group_id = aws_security_group.dagster[0].id
  description       = "HTTPS to the interface VPC endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "dagster_s3" {
  count             = local.dagster ? 1 : 0
  security_group_id = aws_security_group.dagster[0].id
  description       = "HTTPS to S3 through the gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.s3[0].prefix_list_id
}

resource "aws_vpc_security_group_egress_rule" "dagster_db" {
  count                        = local.dagster ? 1 : 0
  security_group_id            = aws_security_group.dagster[0].id
  description                  = "PostgreSQL"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.dagster_db[0].id
}

resource "aws_vpc_security_group_ingress_rule" "dagster_grpc" {
  count                        = local.dagster ? 1 : 0
  security_group_id            = aws_security_group.dagster[0].id
  description                  = "Webserver and daemon to run tasks (Dagster gRPC, same group)"
  ip_protocol                  = "tcp"
  from_port                    = 3000
  to_port                      = 4000
  referenced_security_group_id = aws_security_group.dagster[0].id
}

resource "aws_vpc_security_group_ingress_rule" "dagster_webserver" {
  for_each          = local.dagster ? toset(var.dagster_webserver_allowed_cidrs) : toset([])
  security_group_id = aws_security_group.dagster[0].id
  description       = "Dagster UI from an operator network"
  ip_protocol       = "tcp"
  from_port         = 3000
  to_port           = 3000
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "dagster_db" {
  count                        = local.dagster ? 1 : 0
  security_group_id            = aws_security_group.dagster_db[0].id
  description                  = "PostgreSQL from the Dagster tasks"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.dagster[0].id
}

# ---------------------------------------------------------------------------------------
# RDS PostgreSQL: private, encrypted with the DermaOps key, TLS only, backed up, protected.
# ---------------------------------------------------------------------------------------
resource "aws_db_subnet_group" "dagster" {
  count      = local.dagster ? 1 : 0
  name       = "dermaops-dagster"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_db_parameter_group" "dagster" {
  count  = local.dagster ? 1 : 0
  name   = "dermaops-dagster-pg16"
  family = "postgres16"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  count              = local.dagster ? 1 : 0
  name               = "dermaops-dagster-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  count      = local.dagster ? 1 : 0
  role       = aws_iam_role.rds_monitoring[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "dagster" {
  count                               = local.dagster ? 1 : 0
  identifier                          = "dermaops-dagster"
  engine                              = "postgres"
  engine_version                      = "16"
  instance_class                      = var.dagster_db_instance_class
  allocated_storage                   = 20
  max_allocated_storage               = 200
  storage_type                        = "gp3"
  storage_encrypted                   = true
  kms_key_id                          = aws_kms_key.dermaops.arn
  db_name                             = local.dagster_db_name
  username                            = "dagster_admin"
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = aws_kms_key.dermaops.arn
  iam_database_authentication_enabled = true
  db_subnet_group_name                = aws_db_subnet_group.dagster[0].name
  vpc_security_group_ids              = [aws_security_group.dagster_db[0].id]
  parameter_group_name                = aws_db_parameter_group.dagster[0].name
  publicly_accessible                 = false
  multi_az                            = var.dagster_db_multi_az
  deletion_protection                 = true
  backup_retention_period             = 14
  backup_window                       = "02:00-03:00"
  maintenance_window                  = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot               = true
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "dermaops-dagster-final"
  auto_minor_version_upgrade          = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = aws_kms_key.dermaops.arn
  monitoring_interval                 = 60
  monitoring_role_arn                 = aws_iam_role.rds_monitoring[0].arn
}

# ---------------------------------------------------------------------------------------
# Task definitions and services. DAGSTER_HOME in the image must hold deploy/dagster.aws.yaml
# as dagster.yaml (and workspace.yaml); the run launcher starts runs from the daemon's task
# definition (use_current_ecs_task_config), so runs get the same environment.
# ---------------------------------------------------------------------------------------
locals {
  dagster_environment = [for k, v in {
    DAGSTER_HOME                 = "/opt/dagster/dagster_home"
    DAGSTER_PG_HOST              = local.dagster ? aws_db_instance.dagster[0].address : ""
    DAGSTER_PG_PORT              = "5432"
    DAGSTER_PG_DB                = local.dagster_db_name
    DAGSTER_PG_USERNAME          = var.dagster_db_app_user
    DAGSTER_COMPUTE_LOG_BUCKET   = aws_s3_bucket.store["logs"].bucket
    AWS_REGION                   = var.region
    DERMAOPS_BACKEND             = "aws"
    DERMAOPS_BUCKET_PREFIX       = var.bucket_prefix
    DERMAOPS_KMS_KEY_ID          = aws_kms_key.dermaops.arn
    DERMAOPS_SAGEMAKER_ROLE_ARN  = aws_iam_role.sagemaker_execution.arn
    DERMAOPS_SNS_TOPIC_ARN       = aws_sns_topic.alerts.arn
    DERMAOPS_MODEL_PACKAGE_GROUP = var.model_package_group_name
    DERMAOPS_ENDPOINT_NAME       = var.endpoint_name
  } : { name = k, value = v }]

  dagster_services = {
    webserver = ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/dagster/dagster_home/workspace.yaml"]
    daemon    = ["dagster-daemon", "run", "-w", "/opt/dagster/dagster_home/workspace.yaml"]
  }
}

resource "aws_ecs_task_definition" "dagster" {
  for_each                 = { for k, v in local.dagster_services : k => v if local.dagster }
  family                   = "dermaops-dagster-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "1024"
  memory                   = "4096"
  execution_role_arn       = aws_iam_role.ecs_execution[0].arn
  task_role_arn            = aws_iam_role.dagster.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name         = "dagster"
    image        = var.dagster_image
    essential    = true
    command      = each.value
    user         = "1000:1000"
    environment  = local.dagster_environment
    secrets      = [{ name = "DERMAOPS_PSEUDONYM_SALT", valueFrom = aws_secretsmanager_secret.pseudonym_salt.arn }]
    portMappings = each.key == "webserver" ? [{ containerPort = 3000, protocol = "tcp" }] : []
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.dagster[0].name
        awslogs-region        = var.region
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

resource "aws_ecs_service" "dagster" {
  for_each        = { for k, v in local.dagster_services : k => v if local.dagster }
  name            = "dermaops-dagster-${each.key}"
  cluster         = aws_ecs_cluster.dagster[0].id
  task_definition = aws_ecs_task_definition.dagster[each.key].arn
  launch_type     = "FARGATE"
  desired_count   = 1

  # Never two daemons at once (schedules and sensors would tick twice): stop, then start.
  deployment_minimum_healthy_percent = each.key == "daemon" ? 0 : 100
  deployment_maximum_percent         = each.key == "daemon" ? 100 : 200
  enable_execute_command             = false

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.dagster[0].id]
    assign_public_ip = false
  }
}
