"""`GET /v1/models` through the SDK: the route aliases, nothing else."""


def test_models_lists_exactly_the_route_aliases(client, gateway):
    ids = [model.id for model in client.models.list()]

    assert sorted(ids) == sorted(gateway.aliases)
    assert len(ids) == len(set(ids))
