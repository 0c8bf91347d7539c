import pytest
import torch
from monai.engines.utils import IterationEvents

from cggm_seg.balancing import discrepancy_ratios, ogm_coefficients
from cggm_seg.handlers import OGMGEHandler


def _run(seg_setup, make_trainer, batches, GradRecorder, epochs, **kwargs):
    net, heads, optimizer, loss = seg_setup
    trainer = make_trainer(net, optimizer, loss, batches(2), epochs=epochs)
    recorder = GradRecorder(net, optimizer)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, recorder.on_backward)
    handler = OGMGEHandler(heads, **kwargs)
    handler.attach(trainer)
    k = []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: k.append(handler.method.k.clone()))
    trainer.run()
    return handler, recorder, k


def test_ogm_scales_branches_by_k_inside_the_window_only(seg_setup, make_trainer, batches, GradRecorder):
    handler, rec, k = _run(
        seg_setup, make_trainer, batches, GradRecorder, epochs=2, noise=False, alpha=2.0, end_epoch=1
    )
    modalities = handler.modalities
    assert len(rec.at_step) == 4
    for i, (before, after) in enumerate(zip(rec.after_backward, rec.at_step)):
        in_window = i < 2  # epoch 0 (iterations 1-2) is inside [0, 1)
        for name, grad in before.items():
            parts = name.split(".")
            factor = float(k[i][modalities.index(parts[1])]) if parts[0] == "encoders" and in_window else 1.0
            torch.testing.assert_close(after[name], grad * factor, msg=f"iteration {i + 1}: {name}")
    # k follows the paper's rule from the heads' scores of that iteration
    h = handler.history[-1]
    scores = torch.tensor([h[f"s_{m}"] for m in modalities], dtype=torch.float64)
    expected = ogm_coefficients(discrepancy_ratios(scores), 2.0)
    torch.testing.assert_close(k[-1], expected)


def test_ge_noise_is_added_with_the_gradient_std(seg_setup, make_trainer, batches, GradRecorder):
    handler, rec, k = _run(seg_setup, make_trainer, batches, GradRecorder, epochs=1, seed=3)
    before, after = rec.after_backward[0], rec.at_step[0]
    name = "encoders.t2.levels.1.0.conv.weight"
    factor = float(k[0][handler.modalities.index("t2")])
    noise = after[name] - factor * before[name]
    assert noise.abs().max() > 0
    assert float(noise.std()) == pytest.approx(float(before[name].std()), rel=0.35)
    torch.testing.assert_close(after["final.weight"], before["final.weight"])  # fusion untouched


def test_sublattice_heads_count_their_steps_and_resume(seg_setup, make_trainer, batches):
    """sublattice=True: the heads' trainer takes one step (one sub-lattice) per observation, and the
    count, which picks the next sub-lattice, is saved and restored with the handler."""
    from cggm_seg.networks import make_heads

    net, _, optimizer, loss = seg_setup
    heads = make_heads("segmentation", net, level=0)
    with pytest.raises(
        ValueError, match=r"head 't1' \(SegmentationHead, level 1, stride 1, interp_mode 'trilinear'\) cannot"
    ):
        # refused when the config is parsed
        OGMGEHandler(make_heads("segmentation", net, interp_mode="trilinear"), sublattice=True)
    handler = OGMGEHandler(heads, sublattice=True, observe_every=2, seed=0)
    trainer = make_trainer(net, optimizer, loss, batches(2), epochs=2)
    offsets = []
    trainer.add_event_handler(
        IterationEvents.FORWARD_COMPLETED, lambda e: offsets.append(handler.head_trainer.offset(3))
    )
    handler.attach(trainer)
    trainer.run()
    assert handler.head_trainer.sublattice and handler.head_trainer.steps == 2  # 4 iterations, every 2nd
    assert offsets == [(0, 0, 0), (1, 0, 0), (1, 0, 0), (0, 1, 0)]  # as each iteration began
    state = handler.state_dict()
    assert state["head_steps"] == 2
    again = OGMGEHandler(make_heads("segmentation", net, level=0), sublattice=True, observe_every=2, seed=0)
    again.load_state_dict(state)  # before the run: applied when it starts
    other = make_trainer(net, optimizer, loss, batches(1), epochs=1)
    again.attach(other)
    other.run()
    assert again.head_trainer.steps == 3
    del state["head_steps"]  # a checkpoint from before the count: it starts again at the first sub-lattice
    again.load_state_dict(state)
    assert again.head_trainer.steps == 0
