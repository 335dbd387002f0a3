"""Stage 1: train an agent (PQN or DQN) on Atari Breakout and save checkpoints at several skill levels.

    python 01_train_dqn.py --preset quick                 # 2-core CPU, 48-minute budget, PQN
    python 01_train_dqn.py --preset quick --learner dqn   # the same budget with Double DQN and a replay
    python 01_train_dqn.py --resume                       # continue checkpoints/dqn/latest.pt
    python 01_train_dqn.py --evaluate checkpoints/dqn/best.pt --episodes 30 --epsilon 0.05

Writes checkpoints/dqn/: skill_level_0.pt (before learning) and skill_level_k.pt the first time
the evaluation mean reaches each --skill-thresholds value, latest.pt (resume state), best.pt,
train_log.csv, eval_log.csv; TensorBoard events under runs/dqn/.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common.atari import resolve_game
from common.cli import (add_preset_arg, apply_preset, default_preset, non_negative_float, non_negative_int,
                        pick_device, positive_float, positive_int, probability, refuse_to_replace, run_main)
from common.dqn import evaluate_policy, load_policy
from common.dqn_training import Trainer
from common.pqn_training import PQNTrainer
from common.errors import UserError
from common.io import atomic_write_json, check_writable, run_lock
from common.paths import dqn_checkpoint, dqn_dir, training_lock

# evaluation means that name the skill levels; the quick preset's are what its 48 minutes reach (part1.md)
QUICK_THRESHOLDS = [15.0, 30.0]

# Each learner's settings at each preset; a flag given on the command line always wins.
DQN_PRESETS = {
    # the whole loop in a few seconds, for tests
    "smoke": dict(total_steps=400, time_budget=0.5, num_envs=2, replay_size=4_000, batch_size=16, lr=1e-4,
                  n_step=3, target_update=20, learning_starts=200, updates_per_step=0.25, eps_end=0.1,
                  eps_decay_steps=300, stack=8, conv_widths=[8, 16, 16], fc_width=64, dueling=True,
                  double=True, per=True, eval_every=400, eval_episodes=2, eval_max_frames=2_000,
                  save_every_min=5.0, threads=1, log_every=200, channels_last=False,
                  skill_thresholds=[1.0, 2.0]),
    # sized for a CPU without a GPU: the most learning per wall-clock minute (part1.md, FINDINGS.md)
    "quick": dict(total_steps=2_000_000, time_budget=48.0, num_envs=8, replay_size=100_000, batch_size=32,
                  lr=2.5e-4, lr_end=2.5e-5, n_step=3, target_update=500, learning_starts=5_000,
                  updates_per_step=0.25, eps_end=0.02, eps_decay_steps=50_000, stack=8, conv_widths=[16, 32, 32],
                  fc_width=256,
                  dueling=True, double=True, per=True, eval_every=20_000, eval_episodes=8,
                  eval_max_frames=40_000, save_every_min=5.0, threads=1, log_every=5_000, channels_last=True,
                  skill_thresholds=QUICK_THRESHOLDS),
    # sized for a GPU
    "full": dict(total_steps=10_000_000, time_budget=0.0, num_envs=8, replay_size=100_000, batch_size=128,
                 lr=1e-4, n_step=3, target_update=1_000, learning_starts=20_000, updates_per_step=0.25,
                 eps_end=0.1, eps_decay_steps=1_000_000, stack=8, conv_widths=[32, 64, 64], fc_width=512,
                 dueling=True, double=True, per=True, eval_every=250_000, eval_episodes=30,
                 eval_max_frames=108_000, save_every_min=5.0, threads=0, log_every=10_000,
                 channels_last=False, skill_thresholds=[50.0, 150.0, 250.0]),
}
PQN_PRESETS = {
    "smoke": dict(total_steps=400, time_budget=0.5, num_envs=4, rollout_steps=16, epochs=2, batch_size=32,
                  q_lambda=0.65, lr=1e-4, eps_end=0.1, eps_decay_steps=300, stack=4, conv_widths=[8, 16, 16],
                  fc_width=64, dueling=False, layer_norm=True, eval_every=400, eval_episodes=2,
                  eval_max_frames=2_000, save_every_min=5.0, threads=1, env_threads=1, log_every=200,
                  channels_last=False, skill_thresholds=[1.0, 2.0]),
    # 32 games x 32 steps per rollout, 4 epochs of minibatches of 64: 4x PQN's updates per frame (part1.md)
    "quick": dict(total_steps=3_000_000, time_budget=48.0, num_envs=32, rollout_steps=32, epochs=4, batch_size=64,
                  q_lambda=0.65, lr=2.5e-4, lr_end=2.5e-5, eps_end=0.01, eps_decay_steps=100_000, stack=4,
                  conv_widths=[16, 32, 32], fc_width=256, dueling=False, layer_norm=True, eval_every=100_000,
                  eval_episodes=8, eval_max_frames=40_000, save_every_min=5.0, threads=1, env_threads=2,
                  log_every=5_000, channels_last=True, skill_thresholds=QUICK_THRESHOLDS),
    # PQN's Atari setting (128 games, the Nature widths), sized for a GPU; not run here
    "full": dict(total_steps=10_000_000, time_budget=0.0, num_envs=128, rollout_steps=32, epochs=2, batch_size=128,
                 q_lambda=0.65, lr=2.5e-4, lr_end=2.5e-6, eps_end=0.01, eps_decay_steps=1_000_000, stack=4,
                 conv_widths=[32, 64, 64], fc_width=512, dueling=False, layer_norm=True, eval_every=250_000,
                 eval_episodes=30, eval_max_frames=108_000, save_every_min=5.0, threads=0, env_threads=8,
                 log_every=10_000, channels_last=False, skill_thresholds=[50.0, 150.0, 250.0]),
}
PRESETS = {"dqn": DQN_PRESETS, "pqn": PQN_PRESETS}
# the learner a preset uses unless --learner says otherwise: PQN on a CPU, where it reached 30 in the quick
# budget and DQN did not (part1.md); DQN on a GPU, where PQN is not measured yet
DEFAULT_LEARNER = {"smoke": "pqn", "quick": "pqn", "full": "dqn"}

# Nature DQN (Mnih et al. 2015): overrides preset values, explicit flags still win
PAPER = dict(stack=4, conv_widths=[32, 64, 64], fc_width=512, replay_size=1_000_000, batch_size=32, lr=2.5e-4,
             optimizer="rmsprop-dm", double=False, dueling=False, per=False, n_step=1, target_update=10_000,
             learning_starts=50_000, updates_per_step=0.25, eps_end=0.1, eps_decay_steps=250_000,
             grad_clip=0.0, num_envs=1, total_steps=12_500_000, eval_epsilon=0.05,
             eval_max_frames=18_000, eval_episodes=30, sticky=0.0, noop_max=30, channels_last=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_arg(p)
    g = p.add_argument_group("run")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint ROOT; this stage writes <root>/dqn")
    g.add_argument("--log-dir", default="runs", help="TensorBoard events go to <log-dir>/dqn/<time>")
    g.add_argument("--time-budget", type=non_negative_float, default=None, help="minutes of training (0 = none)")
    g.add_argument("--total-steps", type=positive_int, default=None, help="agent steps (all envs together)")
    g.add_argument("--device", default=None, help="cpu | cuda | mps (default: CUDA -> MPS -> CPU)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=non_negative_int, default=None,
                   help="torch threads (0 = all cores; 1 is faster on a busy shared machine)")
    g.add_argument("--env-threads", type=positive_int, default=None,
                   help="C++ emulator threads (dqn 1: it steps while the update runs; pqn 2)")
    g.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/dqn/latest.pt")
    g.add_argument("--fresh", action="store_true",
                   help="start over although <checkpoint-dir>/dqn holds a trained run (it is replaced)")
    g.add_argument("--paper", action="store_true", help="Nature-DQN setup (RMSProp, uniform replay, 4 frames)")
    g.add_argument("--compile", action="store_true", help="torch.compile the Q-network")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format for the convs (faster with oneDNN on CPU)")
    g.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                   help="run gradient updates while the C++ emulator steps the games")
    g.add_argument("--save-every-min", type=positive_float, default=None, help="minutes between latest.pt saves")
    g.add_argument("--log-every", type=positive_int, default=None, help="agent steps between train_log rows")

    g = p.add_argument_group("environment")
    g.add_argument("--game", default="breakout", help="ALE game: breakout, pong, ms_pacman, space_invaders, ...")
    g.add_argument("--frame-skip", type=positive_int, default=4)
    g.add_argument("--stack", type=positive_int, default=None, help="frames per observation")
    g.add_argument("--noop-max", type=non_negative_int, default=None, help="random no-ops at a game's start")
    g.add_argument("--sticky", type=probability, default=None, help="sticky-action probability (v5 uses 0.25)")
    g.add_argument("--num-envs", type=positive_int, default=None, help="parallel games (C++ vector env)")

    g = p.add_argument_group("agent")
    g.add_argument("--learner", choices=["dqn", "pqn"], default=None,
                   help="pqn (smoke, quick): Q(lambda) on short rollouts of many games, no replay "
                        "(common/pqn_training.py); dqn (full, --paper): Double DQN with a replay and a target "
                        "network (common/dqn_training.py)")
    g.add_argument("--layer-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="normalise every hidden layer (pqn: on)")
    g.add_argument("--conv-widths", type=positive_int, nargs=3, default=None, help="channels of the 3 convs")
    g.add_argument("--fc-width", type=positive_int, default=None, help="hidden units of the first FC layer")
    g.add_argument("--dueling", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--double", action=argparse.BooleanOptionalAction, default=None, help="dqn: Double DQN target")
    g.add_argument("--replay-size", type=positive_int, default=None, help="dqn: transitions (frames stored once)")
    g.add_argument("--batch-size", type=positive_int, default=None, help="minibatch (pqn: of each rollout)")
    g.add_argument("--lr", type=positive_float, default=None)
    g.add_argument("--lr-end", type=positive_float, default=None,
                   help="anneal the learning rate linearly from --lr to this over the run (its time budget, "
                        "or its total steps if those end first); quick 2.5e-5, otherwise constant")
    g.add_argument("--optimizer", choices=["adam", "rmsprop-dm"], default=None,
                   help="adam (pqn: RAdam, Adam with a warm-up of its own) or the Nature DQN's RMSProp")
    g.add_argument("--adam-eps", type=positive_float, default=1.5e-4)
    g.add_argument("--gamma", type=probability, default=0.99)
    g.add_argument("--n-step", type=positive_int, default=None, help="dqn: n-step returns")
    g.add_argument("--target-update", type=positive_int, default=None, help="dqn: updates between target syncs")
    g.add_argument("--grad-clip", type=non_negative_float, default=None, help="max grad norm (0 = off)")
    g.add_argument("--learning-starts", type=non_negative_int, default=None, help="dqn: random steps filling the replay")
    g.add_argument("--updates-per-step", type=positive_float, default=None, help="dqn: gradient updates per agent step")
    g.add_argument("--rollout-steps", type=positive_int, default=None, help="pqn: steps per game per rollout")
    g.add_argument("--epochs", type=positive_int, default=None, help="pqn: passes over each rollout")
    g.add_argument("--q-lambda", type=probability, default=None, help="pqn: lambda of the Q(lambda) returns")
    g.add_argument("--per", action=argparse.BooleanOptionalAction, default=None, help="dqn: prioritized replay")
    g.add_argument("--per-alpha", type=non_negative_float, default=0.6)
    g.add_argument("--per-beta", type=probability, default=0.4, help="initial IS exponent, annealed to 1")

    g = p.add_argument_group("exploration")
    g.add_argument("--eps-start", type=probability, default=1.0)
    g.add_argument("--eps-end", type=probability, default=None)
    g.add_argument("--eps-decay-steps", type=positive_int, default=None)

    g = p.add_argument_group("evaluation and skill levels")
    g.add_argument("--eval-every", type=positive_int, default=None, help="agent steps between evaluations")
    g.add_argument("--eval-episodes", type=positive_int, default=None, help="full games per evaluation")
    g.add_argument("--eval-epsilon", type=probability, default=None)
    g.add_argument("--eval-max-frames", type=positive_int, default=None, help="emulator frames cap per game")
    g.add_argument("--skill-thresholds", type=positive_float, nargs="+", default=None,
                   help="evaluation means naming skill levels 1, 2, ... (smoke 1 2, quick "
                        f"{' '.join(f'{t:g}' for t in QUICK_THRESHOLDS)}, full 50 150 250). A run that reaches "
                        "none still saves its best network as skill_level_1.pt, marked threshold_reached false")
    g.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate this checkpoint and exit")
    g.add_argument("--episodes", type=positive_int, default=None, help="games for --evaluate (default 30)")
    g.add_argument("--epsilon", type=probability, default=None, help="epsilon for --evaluate (default 0.05)")
    g.add_argument("--eval-out", default=None, help="folder for --evaluate CSV/JSON (default <log-dir>/eval/<name>)")
    args = p.parse_args(argv)

    if args.preset is None:
        args.preset = default_preset()
    if args.paper:
        if args.learner == "pqn":
            raise UserError("--paper is the Nature DQN; it does not combine with --learner pqn")
        args.learner = "dqn"
        for key, value in PAPER.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    args.learner = args.learner or DEFAULT_LEARNER[args.preset]
    apply_preset(args, PRESETS[args.learner])
    defaults = dict(optimizer="adam", grad_clip=10.0, eval_epsilon=0.05, sticky=0.0,
                    noop_max=30, layer_norm=False, env_threads=1, rollout_steps=32, epochs=2, q_lambda=0.65)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if sorted(args.skill_thresholds) != list(args.skill_thresholds):
        raise UserError("--skill-thresholds must be increasing, e.g. 50 150 250")
    if args.learner == "pqn" and args.optimizer != "adam":
        raise UserError("--learner pqn trains with Adam (RAdam); drop --optimizer rmsprop-dm")
    if args.learner == "pqn" and args.batch_size > args.num_envs * args.rollout_steps:
        raise UserError(f"--batch-size {args.batch_size} is larger than a rollout ({args.num_envs} envs x "
                        f"{args.rollout_steps} steps)")
    if args.eps_end > args.eps_start:
        raise UserError("--eps-end must not exceed --eps-start")
    return args


def run_evaluation(args: argparse.Namespace) -> None:
    """--evaluate: score a checkpoint over N full games, write per-game/per-life CSV and a JSON summary."""
    device = pick_device(args.device)
    policy = load_policy(args.evaluate, device=str(device))
    episodes = args.episodes or 30
    epsilon = 0.05 if args.epsilon is None else args.epsilon
    print(f"evaluating {args.evaluate} (step {policy.step}) on {policy.env_config['game']}: "
          f"{episodes} games, epsilon {epsilon}")
    result = evaluate_policy(policy, episodes, epsilon, args.eval_max_frames or 108_000, seed=args.seed)
    out = Path(args.eval_out or Path(args.log_dir) / "eval" / Path(args.evaluate).stem)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("games", result["games"]), ("lives", result["lives"])):
        with (out / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
    summary = {k: result[k] for k in ("mean", "std", "min", "max", "episodes", "zero_reward_life_share")}
    summary.update(checkpoint=str(args.evaluate), epsilon=epsilon, step=policy.step,
                   lives=len(result["lives"]), game=policy.env_config["game"])
    atomic_write_json(out / "summary.json", summary)
    print(f"mean {summary['mean']:.1f}  std {summary['std']:.1f}  min {summary['min']:.0f}  "
          f"max {summary['max']:.0f}  zero-reward lives {summary['zero_reward_life_share']:.0%}  -> {out}")


def main() -> None:
    args = parse_args()
    args.game = resolve_game(args.game)
    if args.evaluate:
        run_evaluation(args)
        return
    refuse_to_replace(dqn_checkpoint(args.checkpoint_dir, "latest"), args.resume, args.fresh)
    for folder in (dqn_dir(args.checkpoint_dir), Path(args.log_dir)):
        check_writable(folder)
    with run_lock(training_lock(dqn_dir(args.checkpoint_dir)), "01_train_dqn.py run"):
        trainer = (PQNTrainer if args.learner == "pqn" else Trainer)(args)
        memory = (f"rollouts of {args.rollout_steps} steps" if args.learner == "pqn"
                  else f"replay {trainer.replay.capacity:,}")
        print(f"device {trainer.device}, {trainer.threads} threads, preset {args.preset}, game {args.game}, "
              f"{args.learner}, {args.num_envs} envs, net {args.conv_widths}+{args.fc_width}, {memory}")
        trainer.train()


if __name__ == "__main__":
    run_main(main)
