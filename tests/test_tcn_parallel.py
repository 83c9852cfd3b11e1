"""``tcn_models`` is a graph of one training op per metric type, so that the multiprocess
executor can train the three forecasters concurrently (structure only: ``dg.materialize`` runs
in process; the parallel run itself is checked by hand with the dagster CLI, see README)."""

import dagster as dg
from dagster._core.execution.api import create_execution_plan  # no public equivalent in 1.13

from ocad_detectors.signals import METRIC_TYPES
from ocad_pipeline.definitions import ALL_ASSETS, build_resources, defs
from ocad_pipeline.defs.assets.models import TCN_REPORT_OP, tcn_train_op_name
from ocad_pipeline.defs.jobs import build_jobs

TRAIN_OPS = {tcn_train_op_name(m) for m in METRIC_TYPES}


def _graph() -> dg.GraphDefinition:
    node_def = defs.resolve_asset_graph().get(dg.AssetKey("tcn_models")).assets_def.node_def
    assert isinstance(node_def, dg.GraphDefinition)
    return node_def


def _upstream_nodes(graph: dg.GraphDefinition) -> dict[str, set[str]]:
    """node name -> names of the nodes whose outputs it consumes (graph inputs are no nodes)."""
    out: dict[str, set[str]] = {n.name: set() for n in graph.nodes}
    structure = graph.dependency_structure
    for node in graph.nodes:
        for handle in structure.input_to_upstream_outputs_for_node(node.name).values():
            out[node.name] |= {h.node.name for h in handle}
    return out


def test_one_train_op_per_metric_type_and_a_report_op():
    graph = _graph()
    assert graph.name == "tcn_models"
    assert {n.name for n in graph.nodes} == TRAIN_OPS | {TCN_REPORT_OP}
    assert TRAIN_OPS == {"train_tcn_udp_echo", "train_tcn_ecpri", "train_tcn_lbm"}
    # every train op reads the graph input timeseries_splits (the tables IO manager loads it)
    mapped = {(m.maps_to.node_name, m.maps_to.input_name) for m in graph.input_mappings}
    assert {m.graph_input_name for m in graph.input_mappings} == {"timeseries_splits"}
    assert mapped == {(op, "timeseries_splits") for op in TRAIN_OPS}


def test_train_ops_are_independent_and_fan_into_the_report():
    up = _upstream_nodes(_graph())
    for op in TRAIN_OPS:
        assert up[op] == set(), (op, up[op])  # no edge between train ops: they can run concurrently
    assert up[TCN_REPORT_OP] == TRAIN_OPS


def test_multiprocess_plan_runs_the_three_train_steps_in_one_level():
    main, _, _ = build_jobs(executor=dg.multiprocess_executor)
    only = dg.define_asset_job("tcn_only", selection="tcn_models", executor_def=dg.multiprocess_executor)
    d = dg.Definitions(assets=ALL_ASSETS, jobs=[main, only], resources=build_resources("unused"))
    assert d.resolve_job_def("ocad_pipeline_job").executor_def is dg.multiprocess_executor
    job = d.resolve_job_def("tcn_only")
    plan = create_execution_plan(job, run_config={"ops": {"tcn_models": {"config": {"max_epochs": 1}}}})
    keys = {f"tcn_models.{op}" for op in TRAIN_OPS}
    levels = [{s.key for s in level} for level in plan.get_steps_to_execute_by_level()]
    assert any(keys <= lv for lv in levels), levels  # same level: ready at the same time
    for key in keys:
        assert not (plan.get_step_by_key(key).get_execution_dependency_keys() & keys)
    assert plan.get_step_by_key(f"tcn_models.{TCN_REPORT_OP}").get_execution_dependency_keys() == keys


def test_asset_config_is_handed_to_every_op():
    mapping = _graph().config_mapping
    assert mapping is not None
    cfg = mapping.resolve_from_unvalidated_config({"max_epochs": 3, "dilations": [1, 2], "use_tuned_params": True})
    assert set(cfg) == TRAIN_OPS | {TCN_REPORT_OP}
    for op_cfg in cfg.values():
        c = op_cfg["config"]
        assert c["max_epochs"] == 3 and c["dilations"] == [1, 2] and c["use_tuned_params"] is True
        assert c["hidden_channels"] == 32  # defaults filled in


def test_asset_materialize_uses_the_configured_executor():
    # `dagster asset materialize` and the UI's Materialize run the implicit asset job: it must
    # follow OCAD_EXECUTOR like the named jobs (multiprocess unless set to in_process)
    implicit = defs.resolve_implicit_global_asset_job_def().executor_def
    assert implicit is defs.resolve_job_def("ocad_pipeline_job").executor_def
