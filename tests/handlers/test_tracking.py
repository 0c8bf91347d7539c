"""The balancing statistics reach MLflow and TensorBoard through MONAI's own handlers."""

import pytest
import torch

from cggm_seg.handlers import CGGMHandler


def test_mlflow_handler_logs_balancing_stats(seg_setup, make_trainer, batches, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from monai.handlers import MeanDice, MLFlowHandler, from_engine
    from monai.transforms import Activationsd, AsDiscreted, Compose

    net, heads, optimizer, loss = seg_setup
    handler = CGGMHandler(heads)
    # MLFlowHandler logs state attributes only at epochs that also have metrics: give it one
    trainer = make_trainer(
        net,
        optimizer,
        loss,
        batches(2),
        epochs=2,
        postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        key_train_metric={"train_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    handler.attach(trainer)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MLFlowHandler(
        tracking_uri=uri,
        state_attributes=handler.stat_names,
        iteration_log=False,
        experiment_name="cggm_test",
        close_on_complete=True,
    ).attach(trainer)
    trainer.run()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("cggm_test")
    run = client.search_runs([experiment.experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "B_t1ce")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(trainer.state.B_t1ce)
    assert {"eps_flair", "cos_t2", "L_gm"} <= set(run.data.metrics)


def test_tensorboard_handler_logs_balancing_stats(seg_setup, make_trainer, batches, tmp_path):
    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    net, heads, optimizer, loss = seg_setup
    handler = CGGMHandler(heads)
    trainer = make_trainer(net, optimizer, loss, batches(2), epochs=1)
    handler.attach(trainer)
    TensorBoardStatsHandler(
        log_dir=str(tmp_path), state_attributes=handler.stat_names, iteration_log=False
    ).attach(trainer)
    trainer.run()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Scalars("B_t2")
    assert len(scalars) == 1
    assert scalars[0].value == pytest.approx(trainer.state.B_t2, rel=1e-6)
    assert torch.isfinite(torch.tensor(events.Scalars("L_gm")[0].value))


def test_tensorboard_gets_one_b_value_per_iteration(seg_setup, make_trainer, batches, tmp_path):
    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cggm_seg.handlers import CGGMHandler

    net, heads, optimizer, loss = seg_setup
    handler = CGGMHandler(heads, preset="guarded", tau=0.0)
    writer = TensorBoardStatsHandler(
        log_dir=str(tmp_path), iteration_log=True, epoch_log=False, output_transform=handler.iteration_output
    )
    make_trainer(net, optimizer, loss, batches(3), epochs=2, handlers=[handler, writer]).run()
    writer._writer.flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    points = events.Scalars("B_t1")
    assert [p.step for p in points] == [1, 2, 3, 4, 5, 6]
    assert [p.value for p in points] == pytest.approx([h["B_t1"] for h in handler.history])
    assert len(events.Scalars("train_loss")) == 6
