"""Training time per epoch against the number of classes: original ISNet vs Faster ISNet.

The original ISNet explains every class for every image, so its cost should grow about linearly with
the number of classes; the Faster variants (stochastic, selective) explain one quantity per image and
should not. Each cell of the table is the median over `--repeats` timed epochs (after one warm-up
epoch) of the tiny CNN on random 32x32 images with a random foreground mask.

    .venv/bin/python benchmarks/bench_isnet.py            # prints the table
    .venv/bin/python benchmarks/bench_isnet.py --json out.json
"""
import argparse, json, statistics, time
import torch
from abdomen_nb.isnet import ISNetConfig, fit, tiny_cnn


def fake_data(n, n_classes, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool); mask[..., 6:26, 6:26] = True
    return x, y, mask


def epoch_seconds(variant, n_classes, n_images, repeats, batch_size):
    data = fake_data(n_images, n_classes)
    model = tiny_cnn(n_classes=n_classes)
    cfg = ISNetConfig(variant=variant, batch_size=batch_size)
    C = None if variant == 'standard' else (1.0, 10.0)
    fit(model, data, cfg, C, epochs=1)                           # warm-up (allocations, threads)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter(); fit(model, data, cfg, C, epochs=1); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--classes', type=int, nargs='+', default=[2, 5, 10])
    p.add_argument('--variants', nargs='+', default=['standard', 'original', 'stochastic', 'selective'])
    p.add_argument('--n-images', type=int, default=256, help='images per epoch')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    p.add_argument('--json', help='also write the medians here')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    res = {v: {c: epoch_seconds(v, c, a.n_images, a.repeats, a.batch_size) for c in a.classes} for v in a.variants}
    print(f'median seconds per epoch ({a.n_images} images of 32x32, batch {a.batch_size}, '
          f'{a.repeats} runs, {torch.get_num_threads()} threads)')
    print(f"{'variant':<12}" + ''.join(f'{c:>9} cl' for c in a.classes) + f"   {a.classes[-1]} cl / {a.classes[0]} cl")
    for v, row in res.items():
        print(f'{v:<12}' + ''.join(f'{row[c]:>12.3f}' for c in a.classes) + f'{row[a.classes[-1]] / row[a.classes[0]]:>15.2f}x')
    if a.json:
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    main()
