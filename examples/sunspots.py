"""Real data, no download: forecasting the yearly sunspot numbers bundled with statsmodels.

statsmodels ships the yearly sunspot numbers 1700-2008 (309 values; the
classic series, ``statsmodels.api.datasets.sunspots``) inside the package, so
nothing is fetched at run time. The task is one-step-ahead forecasting: from
the previous 30 years predict the next year's number.

* Split by time: fit on the targets 1730-1880, pick the stopping step on the
  validation targets 1881-1920, test on 1921-2008 (88 forecasts, each from
  the true previous 30 years). The test years hold the largest cycles of the
  record (up to 190 against 154 before 1921).
* The series is modelled on the square-root scale (the classic
  variance-stabilising transform for sunspots), standardised with the
  training mean and std; forecasts are squared back.
* Model: ``rj.SequenceModel([rj.GRU(8)], rj.Dense(1))`` on windows
  ``[B, 30, 1]``, MSE, Adam 1e-2 with clip_norm 1 and L2 1e-4, full batch,
  ``rnnjax.train.fit`` for up to 800 steps with ``eval_data`` = the validation
  windows every 25 steps; then the same fit is rerun to the best validation
  step (``fit`` is deterministic, so this reproduces the early-stopped params
  exactly). The same with an ``rj.LSTM(8)``.
* References on the same test years: persistence (next year = this year) and
  the classic linear autoregression AR(9) fitted by statsmodels' ``AutoReg``
  on the training + validation years.

Output: test RMSE of each (in sunspot-number units) and a PNG of the
forecasts over the test years.

Needs ``pip install statsmodels`` (the ``examples`` extra of rnnjax).

Run: ``python examples/sunspots.py`` (``--help`` for options).
"""

from __future__ import annotations

import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import train

WINDOW = 30
VALID_YEAR = 1880   # targets <= 1880: fit; 1881-1920: validation; > 1920: test
SPLIT_YEAR = 1920


def load():
  """(years [N], values [N]) of the yearly sunspot numbers 1700-2008."""
  import statsmodels.api as sm
  df = sm.datasets.sunspots.load_pandas().data
  return df["YEAR"].to_numpy().astype(int), df["SUNACTIVITY"].to_numpy().astype(np.float64)


def windows(series, window):
  """``x [N - window, window, 1]``, ``y [N - window, 1]``: each window and the value after it."""
  idx = np.arange(window)[None, :] + np.arange(len(series) - window)[:, None]
  return series[idx][..., None], series[window:][:, None]


def rmse(a, b):
  return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--steps", type=int, default=None,
                 help="most updates per model (default 800; quick 100)")
  p.add_argument("--hidden", type=int, default=8)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--models", nargs="+", default=None, choices=["GRU", "LSTM"],
                 help="default: GRU LSTM (quick: GRU)")
  args = p.parse_args(argv)
  steps = _common.pick(args, "steps", 800, 100)
  kinds = _common.pick(args, "models", ["GRU", "LSTM"], ["GRU"])
  years, values = load()
  n_fit = int(np.sum(years <= SPLIT_YEAR))
  root = np.sqrt(values)
  mean, std = root[:n_fit].mean(), root[:n_fit].std()
  z = ((root - mean) / std).astype(np.float32)
  back = lambda out: (np.asarray(out, np.float64)[:, 0] * std + mean) ** 2
  x, y = windows(z, WINDOW)                 # target year of window k: years[k + WINDOW]
  target_years = years[WINDOW:]
  targets = values[WINDOW:]
  tr = target_years <= VALID_YEAR
  va = (target_years > VALID_YEAR) & (target_years <= SPLIT_YEAR)
  te = target_years > SPLIT_YEAR
  truth = targets[te]
  print(f"sunspots {years[0]}-{years[-1]}: {tr.sum()} training windows (targets "
        f"{target_years[tr][0]}-{VALID_YEAR}), {va.sum()} validation ({VALID_YEAR + 1}-{SPLIT_YEAR}), "
        f"{te.sum()} test forecasts ({target_years[te][0]}-{target_years[te][-1]})")

  results = {"persistence": {"rmse": rmse(values[WINDOW - 1:-1][te], truth)}}
  from statsmodels.tsa.ar_model import AutoReg
  ar = AutoReg(values[:n_fit], lags=9).fit()
  c, phi = ar.params[0], ar.params[1:]       # y_t = c + sum_k phi_k y_{t-k}
  lagged = np.stack([values[WINDOW - k:len(values) - k] for k in range(1, 10)], axis=1)
  ar_pred = c + lagged @ phi
  results["AR(9)"] = {"rmse": rmse(ar_pred[te], truth),
                      "train_rmse": rmse(ar_pred[tr | va], targets[tr | va])}
  forecasts = {"AR(9)": ar_pred[te]}

  batch = train.Batch(x[tr], y[tr])
  valid = train.Batch(x[va], y[va])
  for kind in kinds:
    cell = {"GRU": rj.GRU, "LSTM": rj.LSTM}[kind](args.hidden)
    model = rj.SequenceModel([cell], rj.Dense(1))
    params = model.init(jax.random.key(args.seed), input_size=1)
    opt = train.optimizer("adam", args.lr, clip_norm=1.0, l2=1e-4)
    every = max(1, min(25, steps))
    res = train.fit(model, params, lambda i: batch, loss="mse", optimizer=opt, steps=steps,
                    eval_data=valid, eval_every=every, progress=False)
    evals = [(h["eval_loss"], h["step"]) for h in res.history if "eval_loss" in h]
    best_loss, best = min(evals)
    seconds = res.seconds
    if best != steps:   # rerun to the best step: same data, same init -> the same params
      res = train.fit(model, params, lambda i: batch, loss="mse", optimizer=opt, steps=best,
                      progress=False)
      seconds += res.seconds
    apply = jax.jit(model.apply)
    results[kind] = {"rmse": rmse(back(apply(res.params, x[te])), truth),
                     "train_rmse": rmse(back(apply(res.params, x[tr])), targets[tr]),
                     "valid_rmse": rmse(back(apply(res.params, x[va])), targets[va]),
                     "best_step": best, "seconds": seconds}
    forecasts[kind] = back(apply(res.params, x[te]))
    print(f"  {kind}({args.hidden}): best validation step {best} of {steps}, "
          f"{seconds:.1f} s", flush=True)

  rows = [(k, f"{r['rmse']:.1f}", f"{r['train_rmse']:.1f}" if "train_rmse" in r else "",
           f"{r['valid_rmse']:.1f}" if "valid_rmse" in r else "") for k, r in results.items()]
  print(_common.table(rows, ["model", f"test RMSE {target_years[te][0]}-{target_years[te][-1]}",
                             "train RMSE", "valid RMSE"]))

  if not args.no_plot:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.plot(years, values, color="0.6", lw=1, label="observed")
    for k, f in forecasts.items():
      ax.plot(target_years[te], f, lw=1.4, label=f"{k} (test RMSE {results[k]['rmse']:.1f})")
    ax.axvline(SPLIT_YEAR + 0.5, color="k", ls=":", lw=1)
    ax.set(xlabel="year", ylabel="sunspot number", xlim=(1850, years[-1] + 1),
           title="one-step-ahead forecasts of the yearly sunspot number (test years right of the line)")
    ax.legend(fontsize=8)
    _common.savefig(fig, args, "sunspots.png")

  return {k: dict(r) for k, r in results.items()}


if __name__ == "__main__":
  main()
  sys.exit(0)
