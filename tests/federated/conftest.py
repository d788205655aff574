import pytest


@pytest.fixture(scope="session")
def fed_models(tmp_path_factory):
    """{name: path} of :func:`tests.federated.models.export_models`, exported once a session."""
    from tests.federated.models import export_models

    return export_models(tmp_path_factory.mktemp("federated-models"))
