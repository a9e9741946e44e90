"""Sliding-window inference of the tiny U-Net on a full-size CT: seconds per case, peak memory, and the
overhead of the package's inference path over calling MONAI's `sliding_window_inference` directly.

    .venv/bin/python benchmarks/bench_seg.py                 # 'full' phantom case, tiny preset (5 mm)
    .venv/bin/python benchmarks/bench_seg.py --spacing 1.5   # the same network at the published 1.5 mm
    .venv/bin/python benchmarks/bench_seg.py --synthetic     # a synthetic 512 x 512 x 300 volume instead

Each measurement runs `--runs` times (default 5) and the median is printed. Peak memory is measured in a
fresh child process that reads the case from disk: the resident set size polled every 5 ms during one
`predict` (after a warm-up), minus the size just before it. The model is
a tiny U-Net trained for 200 steps on mini phantoms (cached in benchmarks/_out/; `--model CKPT` uses
another): a forward pass costs the same with any weights, but resampling back to the CT grid and the
connected components work only around the predicted organs, so random weights would misstate them.
"""
from __future__ import annotations

import argparse, json, multiprocessing as mp, resource, statistics, sys, time, warnings
from pathlib import Path

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


OUT = Path(__file__).resolve().parent / '_out'


def build(args):
    "The benchmark model: `--model`, or a tiny U-Net trained once on mini phantoms and cached."
    from abdomen_nb import seg
    sp = 'tiny' if args.spacing is None else f'{args.spacing:g}mm'
    ckpt = Path(args.model) if args.model else OUT / f'tiny_unet_{sp}'
    if not (ckpt / 'best.pt').exists() and not ckpt.is_file():
        if args.model: raise SystemExit(f'{ckpt} is not a checkpoint')
        from abdomen_nb.phantom import make_case
        over = {} if args.spacing is None else {'spacing': (args.spacing,) * 3}
        cfg = seg.seg_config('tiny', 'unet', iterations=200, val_every=100, **over)
        cases = [make_case(s, size='mini') for s in range(500, 508)]
        t0 = time.perf_counter()
        seg.train(cfg, cases[:6], cases[6:], out_dir=ckpt, progress=False)
        print(f"(trained the benchmark model in {time.perf_counter() - t0:.0f} s -> {ckpt})")
    model = seg.load_model(ckpt)
    return model, model.seg_config


def timed(fn, runs):
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts, out


def _peak_child(args, case_dir, q):
    "In a fresh process: read the case from disk (so the generator's own peak does not count), then predict."
    torch.set_num_threads(args.threads)
    from abdomen_nb import seg
    from abdomen_nb.core import read_case
    case = read_case(case_dir)
    model, cfg = build(args)
    import gc, threading, psutil
    proc, peak, stop = psutil.Process(), [0], threading.Event()
    def poll():                                              # resident set size every 5 ms
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.005)
    seg.predict(case, model)                                 # warm-up: lazy imports, allocator pools
    gc.collect()
    before = proc.memory_info().rss
    t = threading.Thread(target=poll, daemon=True); t.start()
    seg.predict(case, model)
    stop.set(); t.join()
    q.put({'rss_before_mb': before / 2**20, 'rss_peak_mb': peak[0] / 2**20, 'predict_extra_mb': (peak[0] - before) / 2**20,
           'ct_mb': case.ct.nbytes / 2**20, 'ru_maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--threads', type=int, default=2, help='torch threads (the machine has 2 cores)')
    ap.add_argument('--spacing', type=float, default=None, help='model spacing in mm (default: the tiny preset)')
    ap.add_argument('--synthetic', action='store_true', help='a synthetic 512x512x300 volume instead of the phantom')
    ap.add_argument('--model', default=None, help='checkpoint to use (default: a cached tiny U-Net)')
    ap.add_argument('--json', default=None, help='also write the results here')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai.inferers import sliding_window_inference
    from abdomen_nb import seg

    model, cfg = build(args)
    t0 = time.perf_counter(); case = make_input(args); t_make = time.perf_counter() - t0
    print(f"case {case.case_id}: {case.shape} voxels at {tuple(round(s, 2) for s in case.spacing)} mm "
          f"(made in {t_make:.1f} s); model: tiny U-Net at {cfg.spacing[0]} mm, roi {cfg.roi}, overlap {cfg.overlap}, "
          f"{args.threads} threads, {args.runs} runs", flush=True)

    img = seg.preprocess(case, cfg)
    x = img.as_tensor()[None]
    print(f"network input: {tuple(img.shape[1:])} voxels", flush=True)

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
    res['to_grid_lcc_s'] = timed(lambda: seg.probs_to_masks(probs, img.affine, case, cfg, postprocess=True), args.runs)[0]
    res['to_grid_every_blob_s'] = timed(lambda: seg.probs_to_masks(probs, img.affine, case, cfg, postprocess=False), args.runs)[0]
    res['predict_total_s'], all_ts, _ = timed(lambda: seg.predict(case, model), args.runs)

    from abdomen_nb.core import CTCase, write_case
    case_dir = OUT / f'case_{case.case_id}'
    if not (case_dir / 'ct.nii.gz').exists():
        write_case(CTCase(case.ct, case.affine, {}, {}, {}), case_dir, overwrite=True)
    del case, probs
    # the whole `abdomen-nb segment` path for this case: read the NIfTI, predict, write 9 masks
    import shutil, tempfile
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(case_dir, Path(tmp) / 'BDMAP_00000001')
        res['segment_case_s'], seg_ts, _ = timed(lambda: seg.segment_dataset(tmp, model, overwrite=True, progress=False), args.runs)
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(args, case_dir, q)); p.start(); mem = q.get(timeout=1800); p.join()
    res.update(mem)

    print(f"\nmedians of {args.runs} runs")
    print(f"  sliding window, MONAI directly     {res['swi_direct_s']:8.3f} s")
    print(f"  sliding window, seg.infer          {res['swi_package_s']:8.3f} s   overhead {res['overhead_%']:+.1f}%")
    print(f"  preprocess (RAS, spacing, window)  {res['preprocess_s']:8.3f} s")
    print(f"  back to the grid + largest comp.   {res['to_grid_lcc_s']:8.3f} s")
    print(f"  back to the grid, every blob       {res['to_grid_every_blob_s']:8.3f} s   (postprocess=False: no coarse pruning)")
    print(f"  seg.predict, whole case            {res['predict_total_s']:8.3f} s   (runs: {', '.join(f'{t:.2f}' for t in all_ts)})")
    print(f"  segment_dataset, one case          {res['segment_case_s']:8.3f} s   (read ct.nii.gz + predict + write 9 masks; runs: {', '.join(f'{t:.2f}' for t in seg_ts)})")
    print(f"  peak memory during predict         {res['predict_extra_mb']:8.0f} MB above the {res['rss_before_mb']:.0f} MB "
          f"resident before it (libraries, model, the CT of {res['ct_mb']:.0f} MB); peak RSS {res['rss_peak_mb']:.0f} MB")
    if args.json:
        with open(args.json, 'w') as f: json.dump({'args': vars(args), **res}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
