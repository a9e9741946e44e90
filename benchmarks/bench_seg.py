"""Sliding-window inference of the tiny U-Net on a full-size CT: seconds per case, peak memory, and the
overhead of the package's inference path over calling MONAI's `sliding_window_inference` directly.

    .venv/bin/python benchmarks/bench_seg.py                 # 'full' phantom case, tiny preset (5 mm)
    .venv/bin/python benchmarks/bench_seg.py --spacing 1.5   # the same network at the published 1.5 mm
    .venv/bin/python benchmarks/bench_seg.py --synthetic     # a synthetic 512 x 512 x 300 volume instead

Each measurement runs `--runs` times (default 5) and the median is printed. Peak memory is measured in a
fresh child process (maximum resident set size during `predict`, minus the size before it). The weights
are random: the time of a forward pass does not depend on them.
"""
from __future__ import annotations

import argparse, json, multiprocessing as mp, resource, statistics, sys, time, warnings

import numpy as np
import torch

warnings.filterwarnings('ignore')


def make_input(args):
    from abdomen_nb.core import CTCase
    if args.synthetic:
        rng = np.random.default_rng(0)
        ct = rng.normal(40, 20, (512, 512, 300)).astype(np.float32)
        return CTCase(ct, np.diag([0.78, 0.78, 1.25, 1.0]), {}, {}, {'case_id': 'synthetic_512x512x300'})
    from abdomen_nb.phantom import make_case
    return make_case(0, hospital='northgate', size='full', case_id='full_phantom')


def build(args):
    from abdomen_nb import seg
    over = {} if args.spacing is None else {'spacing': (args.spacing,) * 3}
    cfg = seg.seg_config('tiny', 'unet', **over)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return seg.build_model(cfg).eval(), cfg


def timed(fn, runs):
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts, out


def _peak_child(args, q):
    torch.set_num_threads(args.threads)
    from abdomen_nb import seg
    case = make_input(args)
    model, cfg = build(args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seg.predict(case, model)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put({'rss_before_mb': before / 1024, 'rss_peak_mb': after / 1024, 'predict_extra_mb': (after - before) / 1024})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--threads', type=int, default=2, help='torch threads (the machine has 2 cores)')
    ap.add_argument('--spacing', type=float, default=None, help='model spacing in mm (default: the tiny preset)')
    ap.add_argument('--synthetic', action='store_true', help='a synthetic 512x512x300 volume instead of the phantom')
    ap.add_argument('--json', default=None, help='also write the results here')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai.inferers import sliding_window_inference
    from abdomen_nb import seg

    t0 = time.perf_counter(); case = make_input(args); t_make = time.perf_counter() - t0
    model, cfg = build(args)
    print(f"case {case.case_id}: {case.shape} voxels at {tuple(round(s, 2) for s in case.spacing)} mm "
          f"(made in {t_make:.1f} s); model: tiny U-Net at {cfg.spacing[0]} mm, roi {cfg.roi}, overlap {cfg.overlap}, "
          f"{args.threads} threads, {args.runs} runs")

    img = seg.preprocess(case, cfg)
    x = img.as_tensor()[None]
    print(f"network input: {tuple(img.shape[1:])} voxels")

    @torch.no_grad()
    def direct():   # MONAI alone: Gaussian-blended sliding window + sigmoid on the same input
        return torch.sigmoid(sliding_window_inference(x, cfg.roi, cfg.sw_batch_size, model, overlap=cfg.overlap,
                                                      mode='gaussian'))[0]
    def ours(): return seg.infer(model, img, cfg)

    direct(); ours()                                         # warm-up (allocations, MONAI lazy imports)
    res = {}
    # interleave the two so that load from other processes hits both alike
    d_ts, o_ts = [], []
    for _ in range(args.runs):
        d_ts.append(timed(direct, 1)[0]); o_ts.append(timed(ours, 1)[0])
    res['swi_direct_s'], res['swi_package_s'] = statistics.median(d_ts), statistics.median(o_ts)
    res['overhead_%'] = 100 * (res['swi_package_s'] / res['swi_direct_s'] - 1)
    assert torch.allclose(direct(), ours(), atol=1e-6), 'package and direct MONAI disagree'

    res['preprocess_s'] = timed(lambda: seg.preprocess(case, cfg), args.runs)[0]
    probs = ours()
    res['to_original_grid_s'] = timed(lambda: seg.probs_to_masks(probs, img.affine, case, cfg, postprocess=False), args.runs)[0]
    res['postprocess_lcc_s'] = timed(lambda: seg.probs_to_masks(probs, img.affine, case, cfg, postprocess=True), args.runs)[0] \
        - res['to_original_grid_s']
    res['predict_total_s'], all_ts, _ = timed(lambda: seg.predict(case, model), args.runs)

    ctx = mp.get_context('spawn'); q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(args, q)); p.start(); mem = q.get(timeout=1800); p.join()
    res.update(mem)

    print(f"\nmedians of {args.runs} runs")
    print(f"  sliding window, MONAI directly     {res['swi_direct_s']:8.3f} s")
    print(f"  sliding window, seg.infer          {res['swi_package_s']:8.3f} s   overhead {res['overhead_%']:+.1f}%")
    print(f"  preprocess (RAS, spacing, window)  {res['preprocess_s']:8.3f} s")
    print(f"  back to the original grid          {res['to_original_grid_s']:8.3f} s")
    print(f"  largest connected components       {res['postprocess_lcc_s']:8.3f} s")
    print(f"  seg.predict, whole case            {res['predict_total_s']:8.3f} s   (runs: {', '.join(f'{t:.2f}' for t in all_ts)})")
    print(f"  peak memory of predict             {res['predict_extra_mb']:8.0f} MB above {res['rss_before_mb']:.0f} MB "
          f"(case + model loaded); peak RSS {res['rss_peak_mb']:.0f} MB")
    if args.json:
        with open(args.json, 'w') as f: json.dump({'case': case.case_id, 'shape': case.shape, 'args': vars(args), **res}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
