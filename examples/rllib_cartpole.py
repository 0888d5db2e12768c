import zray
from zray.rllib.algorithms.ppo import PPOConfig
from zray.rllib.core.rl_module.default_model_config import DefaultModelConfig

zray.init(num_cpus=2, include_dashboard=False)
config = (
    PPOConfig()
    .environment("CartPole-v1")
    .env_runners(num_env_runners=1, num_envs_per_env_runner=8, rollout_fragment_length=64)
    .training(lr=1e-3, lambda_=0.95, train_batch_size_per_learner=512, minibatch_size=128,
              num_epochs=10, clip_param=0.2, vf_loss_coeff=0.5, use_kl_loss=False,
              vf_clip_param=1000.0, grad_clip=0.5)
    .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
    .debugging(seed=0)
)
algo = config.build_algo()               # checks the config, starts the env runner actor
for _ in range(5):
    result = algo.train()
    print(result["training_iteration"], result["env_runners/episode_return_mean"])
path = algo.save("/tmp/ppo_cartpole_ckpt")   # module + optimizer state, config.json
print(algo.compute_single_action([0.0, 0.1, 0.02, -0.1]))   # 0 or 1
algo.stop()                              # ends the env runner actor
zray.shutdown()
