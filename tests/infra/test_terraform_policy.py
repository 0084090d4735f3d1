"""Least-privilege checks on the Terraform in infra/ (parsed with python-hcl2, no terraform needed).

- The SageMaker endpoint role may touch nothing in the raw or processed buckets: every policy
  that reaches it (inline policies, managed attachments, merged source documents, dynamic
  statements) is followed and each S3 resource is matched against those buckets.
- The endpoint role is the one the deployment is told to use for the endpoint's models.
- Job creation is scoped to `dermaops-*` training/processing job ARNs.
- Identity policies use the key only through services (kms:ViaService) and never for
  Encrypt/ReEncrypt; the key policy's service statements carry a source condition.
- Lifecycle hygiene on every bucket; the pseudonym salt is readable by the Dagster role only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is a test dependency (pip install -e '.[test]')")

INFRA = Path(__file__).resolve().parents[2] / "infra"
ENDPOINT_ROLE = "sagemaker_endpoint"
JOBS_ROLE = "sagemaker_execution"
FORBIDDEN_BUCKETS = ("raw", "processed")


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def _unquote(value: Any) -> Any:
    """python-hcl2 8.x keeps HCL string quotes (and quoted block labels); strip them."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            return value[1:-1].replace('\\"', '"')
        return value
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    return value


def load_infra(infra: Path = INFRA) -> dict[str, dict]:
    """{"resource": {type: {name: body}}, "data": {...}, "output": {name: body}, "locals": {...}}."""
    merged: dict[str, dict] = {"resource": {}, "data": {}, "output": {}, "locals": {}, "variable": {}}
    files = sorted(infra.glob("*.tf"))
    assert files, f"no Terraform files under {infra}"
    for path in files:
        with path.open() as fh:
            doc = _unquote(hcl2.load(fh))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        assert name not in merged[kind].setdefault(rtype, {}), f"duplicate {kind} {rtype}.{name}"
                        merged[kind][rtype][name] = body
        for block in doc.get("output", []):
            merged["output"].update(block)
        for block in doc.get("variable", []):
            merged["variable"].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
    return merged


@pytest.fixture(scope="module")
def tf() -> dict[str, dict]:
    return load_infra()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    return " ".join(str(v) for v in _as_list(value))


DOC_REF = re.compile(r"data\.aws_iam_policy_document\.(\w+)(?:\[\d+\])?\.json")


def statements(tf: dict, doc_name: str, _seen: frozenset = frozenset()) -> Iterator[dict]:
    """Every statement of a policy document, dynamic ones and merged source/override documents included."""
    assert doc_name not in _seen, f"policy document cycle through {doc_name}"
    doc = tf["data"]["aws_iam_policy_document"][doc_name]
    for key in ("source_policy_documents", "override_policy_documents"):
        for ref in DOC_REF.findall(_text(doc.get(key))):
            yield from statements(tf, ref, _seen | {doc_name})
    for stmt in _as_list(doc.get("statement")):
        yield stmt
    for dyn in _as_list(doc.get("dynamic")):
        for label, body in dyn.items():
            if label == "statement":
                for content in _as_list(body.get("content")):
                    yield content


def docs_of_role(tf: dict, role: str) -> tuple[list[str], list[str]]:
    """(policy documents attached inline or as customer policies, managed policy ARNs) of aws_iam_role.<role>."""
    role_ref = re.compile(rf"aws_iam_role\.{role}(?:\[\d+\])?\.(?:id|name|arn)\b")
    docs: list[str] = []
    managed: list[str] = []
    for name, body in tf["resource"].get("aws_iam_role_policy", {}).items():
        if role_ref.search(_text(body.get("role"))):
            refs = DOC_REF.findall(_text(body.get("policy")))
            assert refs, f"aws_iam_role_policy.{name} policy is not an aws_iam_policy_document (cannot check it)"
            docs += refs
    for rtype in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment"):
        for name, body in tf["resource"].get(rtype, {}).items():
            if role_ref.search(_text(body.get("role")) + " " + _text(body.get("roles"))):
                arn = _text(body.get("policy_arn"))
                m = re.search(r"aws_iam_policy\.(\w+)", arn)
                if m:
                    refs = DOC_REF.findall(_text(tf["resource"]["aws_iam_policy"][m.group(1)].get("policy")))
                    assert refs, f"aws_iam_policy.{m.group(1)} is not an aws_iam_policy_document"
                    docs += refs
                else:
                    managed.append(arn)
    role_body = tf["resource"]["aws_iam_role"][role]
    for inline in _as_list(role_body.get("inline_policy")):
        docs += DOC_REF.findall(_text(inline.get("policy")))
    managed += [_text(a) for a in _as_list(role_body.get("managed_policy_arns"))]
    return docs, managed


def role_statements(tf: dict, role: str) -> list[dict]:
    docs, _ = docs_of_role(tf, role)
    return [s for d in docs for s in statements(tf, d)]


def _allow(stmt: dict) -> bool:
    return _text(stmt.get("effect") or "Allow") == "Allow"


def _actions(stmt: dict) -> list[str]:
    return [a.lower() for a in _as_list(stmt.get("actions"))]


def touched_buckets(resource: str, bucket_prefix_names: tuple[str, ...]) -> set[str]:
    """Which of the store buckets an IAM resource expression can reach (all of them when unsure)."""
    every = set(bucket_prefix_names)
    if resource.strip() == "*":
        return every
    hits = set(re.findall(r'aws_s3_bucket\.store\["(\w+)"\]', resource))
    hits |= set(re.findall(r'local\.names\["(\w+)"\]', resource))
    hits |= set(re.findall(r"\$\{var\.bucket_prefix\}-(\w+)", resource))
    if re.search(r"local\.(bucket_arns|object_arns|names|buckets)\b(?!\[)", resource):
        hits |= every
    if re.search(r"aws_s3_bucket\.store\s*(:|\[\*\]|\))|values\(aws_s3_bucket\.store\)", resource):
        hits |= every
    if re.search(r"\$\{var\.bucket_prefix\}\*|\$\{var\.bucket_prefix\}-\*|arn:[^:]*:s3:::\*", resource):
        hits |= every
    return hits


# ---------------------------------------------------------------------------------------------
# The endpoint role
# ---------------------------------------------------------------------------------------------
def test_endpoint_role_has_no_statement_on_raw_or_processed_buckets(tf):
    docs, managed = docs_of_role(tf, ENDPOINT_ROLE)
    assert docs, "the endpoint role has no policy at all (expected model packages + data capture)"
    assert not managed, f"managed policies on the endpoint role cannot be checked and reach too far: {managed}"
    stores = ("raw", "processed", "models", "logs")
    offending = []
    for stmt in role_statements(tf, ENDPOINT_ROLE):
        if not _allow(stmt):
            continue
        s3ish = any(a.startswith("s3:") or a == "*" or a.startswith("s3*") for a in _actions(stmt))
        for res in _as_list(stmt.get("resources")):
            if res.strip() == "*" and not s3ish:
                continue  # ecr:GetAuthorizationToken, cloudwatch:PutMetricData and the like
            reached = touched_buckets(res, stores) & set(FORBIDDEN_BUCKETS)
            if reached:
                offending.append((stmt.get("sid"), res, sorted(reached)))
    assert not offending, f"endpoint role statements on raw/processed buckets: {offending}"


def test_endpoint_role_reads_packages_and_writes_capture_only(tf):
    stmts = [s for s in role_statements(tf, ENDPOINT_ROLE) if _allow(s)]
    s3 = [(a, r) for s in stmts for a in _actions(s) if a.startswith("s3:") for r in _as_list(s.get("resources"))]
    assert ("s3:getobject", '${aws_s3_bucket.store["models"].arn}/${local.package_prefix}*') in s3
    assert ("s3:putobject", '${aws_s3_bucket.store["logs"].arn}/${local.capture_prefix}*') in s3
    writes = [(a, r) for a, r in s3 if a in ("s3:putobject", "s3:deleteobject")]
    assert all("logs" in r and "capture_prefix" in r for _, r in writes), writes
    assert not any(a == "s3:getobject" and "logs" in r for a, r in s3), "the endpoint must not read other logs"


def test_endpoint_role_is_the_one_the_endpoint_uses(tf):
    outputs = tf["output"]
    assert _text(outputs["sagemaker_endpoint_role_arn"]["value"]) == "${aws_iam_role.sagemaker_endpoint.arn}"
    assert _text(outputs["sagemaker_execution_role_arn"]["value"]) == "${aws_iam_role.sagemaker_execution.arn}"
    env = _text(outputs["dagster_env"]["value"])
    assert "DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN=${aws_iam_role.sagemaker_endpoint.arn}" in env
    assert "DERMAOPS_SAGEMAKER_ROLE_ARN=${aws_iam_role.sagemaker_execution.arn}" in env
    roles = tf["resource"]["aws_iam_role"]
    assert _text(roles[ENDPOINT_ROLE]["name"]) != _text(roles[JOBS_ROLE]["name"])
    # The orchestrator can hand the endpoint role to SageMaker (CreateModel ExecutionRoleArn), and only to it.
    pass_role = [s for s in role_statements(tf, "dagster") if "iam:passrole" in _actions(s)]
    passed = {r for s in pass_role for r in _as_list(s.get("resources"))}
    assert "${aws_iam_role.sagemaker_endpoint.arn}" in passed
    for s in pass_role:
        if "${aws_iam_role.sagemaker_endpoint.arn}" in _as_list(s.get("resources")):
            conds = {(_text(c.get("variable")), _text(c.get("values"))) for c in _as_list(s.get("condition"))}
            assert ("iam:PassedToService", "sagemaker.amazonaws.com") in conds


# ---------------------------------------------------------------------------------------------
# Jobs, keys, audit, lifecycle
# ---------------------------------------------------------------------------------------------
JOB_CREATE = {"sagemaker:createtrainingjob": "training-job", "sagemaker:createprocessingjob": "processing-job"}


def test_job_creation_is_scoped_to_dermaops_names(tf):
    found = 0
    for doc in tf["data"]["aws_iam_policy_document"]:
        for stmt in statements(tf, doc):
            acts = _actions(stmt)
            wild = [a for a in acts if a in ("*", "sagemaker:*") or (a.endswith("*") and "sagemaker:create".startswith(a[:-1]))]
            assert not (wild and _allow(stmt)), f"{doc}: {wild} would allow creating jobs of any name"
            for action, kind in JOB_CREATE.items():
                if action in acts and _allow(stmt):
                    found += 1
                    for res in _as_list(stmt.get("resources")):
                        assert re.search(r":(training-job|processing-job)/dermaops-[^*]*\*?$", res), (doc, stmt.get("sid"), res)
                    assert any(f":{kind}/dermaops-" in r for r in _as_list(stmt.get("resources"))), (doc, kind)
    assert found >= 2, "no statement allows CreateTrainingJob / CreateProcessingJob"


IDENTITY_DOCS_EXCLUDED = {"kms"}  # the key policy itself is checked below


def test_roles_use_the_key_through_services_and_only_to_decrypt_or_generate(tf):
    for doc in tf["data"]["aws_iam_policy_document"]:
        if doc in IDENTITY_DOCS_EXCLUDED:
            continue
        for stmt in statements(tf, doc):
            kms = [a for a in _actions(stmt) if a.startswith("kms:")]
            if not kms or not _allow(stmt) or stmt.get("principals"):
                continue
            assert not [a for a in kms if a.startswith(("kms:encrypt", "kms:reencrypt")) or a == "kms:*"], (doc, kms)
            variables = {_text(c.get("variable")) for c in _as_list(stmt.get("condition"))}
            assert "kms:ViaService" in variables, f"{doc}/{stmt.get('sid')}: key use without kms:ViaService"


def test_key_policy_service_statements_are_bound_to_this_account(tf):
    for stmt in statements(tf, "kms"):
        services = [p for p in _as_list(stmt.get("principals")) if _text(p.get("type")) == "Service"]
        if not services:
            continue
        variables = {_text(c.get("variable")) for c in _as_list(stmt.get("condition"))}
        assert variables & {"aws:SourceAccount", "aws:SourceArn", "kms:EncryptionContext:aws:logs:arn"}, stmt.get("sid")
        if "cloudwatch.amazonaws.com" in _text(services[0].get("identifiers")):
            assert "aws:SourceAccount" in variables


def test_autoscaling_writes_are_limited_to_sagemaker_variant_targets(tf):
    for stmt in role_statements(tf, "dagster"):
        writes = [a for a in _actions(stmt) if a.startswith("application-autoscaling:")
                  and not a.startswith("application-autoscaling:describe")]
        if not writes:
            continue
        assert all(":scalable-target/" in r for r in _as_list(stmt.get("resources"))), stmt.get("sid")
        conds = {_text(c.get("variable")): _text(c.get("values")) for c in _as_list(stmt.get("condition"))}
        assert conds.get("application-autoscaling:service-namespace") == "sagemaker"
        assert conds.get("application-autoscaling:scalable-dimension") == "sagemaker:variant:DesiredInstanceCount"


def test_pseudonym_salt_is_readable_by_the_dagster_role_only(tf):
    secret = tf["resource"]["aws_secretsmanager_secret"]["pseudonym_salt"]
    assert "aws_kms_key.dermaops" in _text(secret.get("kms_key_id"))
    assert "aws_secretsmanager_secret_version" not in tf["resource"], "the salt value must not go through state"
    for role in (JOBS_ROLE, ENDPOINT_ROLE):
        assert not [s for s in role_statements(tf, role) if any(a.startswith("secretsmanager:") for a in _actions(s))]
    readers = [s for s in role_statements(tf, "dagster") if "secretsmanager:getsecretvalue" in _actions(s)]
    assert readers and all(_as_list(s["resources"]) == ["${aws_secretsmanager_secret.pseudonym_salt.arn}"] for s in readers)
    assert "pseudonym_salt_secret_arn" in tf["output"]


def test_cloudtrail_records_data_events_on_phi_buckets_encrypted_and_validated(tf):
    trail = tf["resource"]["aws_cloudtrail"]["dermaops"]
    assert _text(trail["enable_log_file_validation"]) in ("true", "True")
    assert "aws_kms_key.dermaops" in _text(trail["kms_key_id"])
    selectors = _as_list(trail["advanced_event_selector"])
    text = repr(selectors)
    assert "Management" in text and "AWS::S3::Object" in text and "local.phi_buckets" in text
    assert tf["locals"]["phi_buckets"] == '${toset(["raw", "processed", "logs"])}'
    assert "existing_trail_arn" in tf["variable"] and "create_cloudtrail" in tf["variable"]


def _lifecycle_of(tf: dict, bucket_ref: str) -> list[dict]:
    rules = []
    for name, body in tf["resource"]["aws_s3_bucket_lifecycle_configuration"].items():
        if bucket_ref in _text(body.get("bucket")) or (
                "each.key" in _text(body.get("bucket")) and bucket_ref.split('"')[1:2]
                and bucket_ref.split('"')[1] in _text(body.get("for_each"))):
            rules += _as_list(body.get("rule"))
    return rules


@pytest.mark.parametrize("bucket_ref", [
    'aws_s3_bucket.store["raw"]', 'aws_s3_bucket.store["processed"]', 'aws_s3_bucket.store["models"]',
    'aws_s3_bucket.store["logs"]', "aws_s3_bucket.access_logs", "aws_s3_bucket.cloudtrail",
])
def test_every_bucket_has_lifecycle_hygiene(tf, bucket_ref):
    rules = _lifecycle_of(tf, bucket_ref)
    assert rules, f"no lifecycle configuration for {bucket_ref}"
    text = repr(rules)
    assert "abort_incomplete_multipart_upload" in text
    assert "noncurrent_version_expiration" in text
    assert "'expired_object_delete_marker': True" in text or "'expired_object_delete_marker': 'true'" in text
    assert any(_text(f.get("prefix")) == "_tmp/" for r in rules for f in _as_list(r.get("filter"))
               if "expiration" in r), "no _tmp/ expiry"
    if bucket_ref.endswith('["models"]'):
        ckpt = [r for r in rules for f in _as_list(r.get("filter")) if _text(f.get("prefix")) == "${local.checkpoint_prefix}"]
        assert ckpt and "expiration" in ckpt[0]
        assert tf["locals"]["checkpoint_prefix"] == "checkpoints/"


def test_phi_buckets_are_access_logged_to_the_access_log_bucket(tf):
    logging = tf["resource"]["aws_s3_bucket_logging"]["store"]
    assert _text(logging["for_each"]) == "${local.buckets}"
    assert _text(logging["target_bucket"]) == "${aws_s3_bucket.access_logs.id}"


# ---------------------------------------------------------------------------------------------
# A poor man's `terraform validate` (terraform cannot init offline here): every reference to a
# variable, local, resource or data source points at something declared.
# ---------------------------------------------------------------------------------------------
def test_every_reference_is_declared(tf):
    declared_res = {f"{t}.{n}" for t, named in tf["resource"].items() for n in named}
    declared_data = {f"{t}.{n}" for t, named in tf["data"].items() for n in named}
    text = "\n".join(p.read_text() for p in sorted(INFRA.glob("*.tf")))
    code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines())
    missing = set()
    for name in re.findall(r"\bvar\.(\w+)", code):
        if name not in tf["variable"]:
            missing.add(f"var.{name}")
    for name in re.findall(r"\blocal\.(\w+)", code):
        if name not in tf["locals"]:
            missing.add(f"local.{name}")
    for rtype, name in re.findall(r"\bdata\.(aws_\w+)\.(\w+)", code):
        if f"{rtype}.{name}" not in declared_data:
            missing.add(f"data.{rtype}.{name}")
    for rtype, name in re.findall(r"(?<![\w.\"])(aws_\w+)\.(\w+)\b(?!\s*=)", code):
        if f"{rtype}.{name}" not in declared_res and not rtype.startswith("aws_iam_policy_document"):
            missing.add(f"{rtype}.{name}")
    assert not missing, f"undeclared references: {sorted(missing)}"
