import re
from pathlib import Path

import pytest

from propensity.catalog import catalog_url, warehouse
from propensity.errors import PropensityError
from propensity.settings import get_settings
from propensity.spark import spark_conf


def test_defaults_put_all_state_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROPENSITY_HOME", raising=False)
    settings = get_settings()
    assert settings.home == tmp_path / ".propensity"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / '.propensity' / 'mlflow' / 'mlflow.db'}"
    for path in (settings.data_root / "warehouse", settings.feature_store_dir, settings.local_pipeline_root):
        assert path.is_relative_to(settings.home)
    assert settings.storage_url == str(settings.home)


def test_tables_and_storage_move_state_out_of_the_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_TABLES", str(tmp_path / "shared"))
    monkeypatch.setenv("PROPENSITY_STORAGE", "s3://bucket/prefix/")
    monkeypatch.setenv("PROPENSITY_KFP_PIPELINE_ROOT", "s3://bucket/kfp")
    settings = get_settings(home=tmp_path / "home")
    assert warehouse(settings) == (tmp_path / "shared" / "warehouse").as_uri()
    assert catalog_url(settings) == f"sqlite:///{tmp_path / 'shared' / 'catalog.db'}"
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.local_pipeline_root == tmp_path / "home" / "kfp"  # kfp.local writes only to a local disk


def test_tables_on_an_object_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from propensity.catalog import object_store_properties, spark_catalog_conf

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")  # pragma: allowlist secret
    settings = get_settings(
        home=tmp_path / "home",
        tables="s3://bucket/tables/",
        catalog="postgresql+psycopg://u@db:5432/catalog",
        s3_endpoint_url="http://seaweedfs:8333",
    )
    assert warehouse(settings) == "s3://bucket/tables/warehouse"
    assert settings.data_root == tmp_path / "home"  # Feast's local files; no table
    properties = object_store_properties(settings)
    assert properties["io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert properties["s3.endpoint"] == "http://seaweedfs:8333" and properties["s3.path-style-access"] == "true"
    assert properties["s3.access-key-id"] == "key" and properties["client.region"]
    conf = spark_catalog_conf(settings)
    secret = [key for key, value in conf.items() if value == "secret"]  # pragma: allowlist secret
    assert secret and all(re.search(spark_conf(settings)["spark.redaction.regex"], key) for key in secret)
    assert object_store_properties(get_settings(home=tmp_path / "home")) == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROPENSITY_TABLES", "s3a://bucket/tables"),
        ("PROPENSITY_TABLES", "s3://bucket/tables"),  # without a catalog every pod would keep its own
        ("PROPENSITY_SPARK_MASTER", "k8s://https://kubernetes.default.svc"),  # tables on a local disk
        ("PROPENSITY_STORAGE", "gs://bucket"),
        ("PROPENSITY_STORAGE", "s3://"),
    ],
)
def test_locations_that_cannot_work_are_refused(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("PROPENSITY_").lower()):
        get_settings()


def test_environment_and_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "propensity.toml"
    config.write_text('online_store = "redis"\nredis_connection = "redis:6379"\nmin_auc = 0.7\n')
    monkeypatch.setenv("PROPENSITY_CONFIG", str(config))
    monkeypatch.setenv("PROPENSITY_MIN_AUC", "0.65")  # the environment wins over the file
    settings = get_settings()
    assert settings.online_store == "redis" and settings.redis_connection == "redis:6379"
    assert settings.min_auc == 0.65


def test_settings_round_trip_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = get_settings(home=tmp_path / "h", min_auc=0.61)
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    assert get_settings() == original


def test_invalid_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_ONLINE_STORE", "memcached")
    with pytest.raises(ValueError, match="online_store"):
        get_settings()


def test_a_feast_registry_must_be_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_FEAST_REGISTRY", "registry.db")
    with pytest.raises(ValueError, match=r"(?s)feast_registry.*SQLAlchemy database URL"):
        get_settings()
    url = "postgresql+psycopg://feast:pw@db:5432/feast"  # pragma: allowlist secret
    monkeypatch.setenv("PROPENSITY_FEAST_REGISTRY", url)
    registry = get_settings().feast_registry
    assert registry is not None and "pw" not in repr(registry)  # a credential: never printed


def test_spark_on_a_cluster_gets_the_driver_address_and_the_settings(tmp_path: Path) -> None:
    local = spark_conf(get_settings(home=tmp_path))
    assert not any(key.startswith("spark.executorEnv.") for key in local)
    remote = get_settings(
        home=tmp_path,
        spark_master="spark://10.0.0.5:7077",
        spark_driver_host="propensity-driver.ml.svc",
        redis_password="s3cret",  # pragma: allowlist secret
    )
    conf = spark_conf(remote)
    assert conf["spark.driver.host"] == "propensity-driver.ml.svc"
    assert conf["spark.executorEnv.PROPENSITY_ONLINE_STORE"] == remote.online_store
    assert conf["spark.executorEnv.PYSPARK_PYTHON"]
    secrets = [key for key in conf if key.startswith("spark.executorEnv.") and "s3cret" in conf[key]]
    assert secrets and all(re.search(conf["spark.redaction.regex"], key) for key in secrets)
    with pytest.raises(ValueError, match="spark_master"):
        get_settings(spark_master="yarn")


def test_spark_on_kubernetes_runs_executor_pods_of_the_project_image(tmp_path: Path) -> None:
    cluster = {
        "home": tmp_path,
        "spark_master": "k8s://https://kubernetes.default.svc",
        "image": "reg/p:1",
        "tables": "s3://propensity/tables",
        "catalog": "postgresql+psycopg://catalog@db:5432/catalog",
    }
    with pytest.raises(PropensityError, match="PROPENSITY_SPARK_DRIVER_HOST"):
        spark_conf(get_settings(**cluster))
    with pytest.raises(PropensityError, match="PROPENSITY_SPARK_NAMESPACE"):
        spark_conf(get_settings(**cluster, spark_driver_host="10.1.2.3"))
    conf = spark_conf(get_settings(**cluster, spark_driver_host="10.1.2.3", spark_namespace="ml"))
    assert conf["spark.kubernetes.container.image"] == "reg/p:1" and conf["spark.kubernetes.namespace"] == "ml"
    assert conf["spark.driver.host"] == "10.1.2.3" and conf["spark.driver.port"] == "7078"
    assert conf["spark.executor.instances"] == "2"


def test_executor_pods_mount_nothing_and_read_credentials_from_the_secret(tmp_path: Path) -> None:
    import kubernetes_validate
    import yaml

    from tests.test_manifests import KUBERNETES_VERSIONS

    settings = get_settings(
        home=tmp_path / "home",
        tables="s3://propensity/tables",
        catalog="postgresql+psycopg://catalog@db:5432/catalog",
        spark_master="k8s://https://kubernetes.default.svc",
        spark_driver_host="10.1.2.3",
        spark_namespace="ml",
        redis_password="s3cret",  # pragma: allowlist secret
    )
    conf = spark_conf(settings)
    assert not [key for key, value in conf.items() if "s3cret" in value]  # not in the pod spec Spark writes
    assert conf["spark.executorEnv.PROPENSITY_TABLES"] == "s3://propensity/tables"
    template = yaml.safe_load(Path(conf["spark.kubernetes.executor.podTemplateFile"]).read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(template, version, strict=True)
    spec = template["spec"]
    (container,) = spec["containers"]
    assert "volumes" not in spec and "volumeMounts" not in container  # the tables are on the object store
    assert container["envFrom"] == [{"secretRef": {"name": "propensity-secrets", "optional": True}}]
    assert spec["automountServiceAccountToken"] is False and container["securityContext"]["runAsNonRoot"]
