import pytest


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """{name: path} of :func:`tests.runtime.models.export_models`, exported once a session
    (five exports: the slowest part of these tests, shared by their modules)."""
    from tests.runtime.models import export_models

    return export_models(tmp_path_factory.mktemp("runtime-models"))
