"""Cheap checks that the Dagster code location loads and has the expected shape."""

import dagster as dg

from ocad_pipeline.definitions import defs

DATA_ASSETS = {
    "raw_metrics": "data",
    "sample_splits": "datasets",
    "reference_stats": "datasets",
    "timeseries_splits": "datasets",
    "multivariate_splits": "datasets",
}


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert repo.get_job("ocad_pipeline_job") is not None


def test_data_assets_are_grouped_and_described():
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    for key, group in DATA_ASSETS.items():
        assert key in specs, key
        assert specs[key].group_name == group
        assert specs[key].description and len(specs[key].description) > 40


def test_every_table_has_a_blocking_schema_check():
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name): graph.get_check_spec(k) for k in graph.asset_check_keys}
    for asset, names in {
        "raw_metrics": ["samples_schema", "incidents_schema", "labels_schema"],
        "timeseries_splits": ["train_schema", "val_schema", "test_schema", "splits_disjoint"],
        "multivariate_splits": ["train_schema", "val_schema", "test_schema", "splits_disjoint"],
    }.items():
        for n in names:
            assert checks[(asset, n)].blocking, (asset, n)
