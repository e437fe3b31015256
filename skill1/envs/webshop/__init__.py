"""WebShop (Yao et al. 2022) in text mode, reimplemented in pure Python over the original data files.

data.py loads the files and builds the shuffled human goals, search.py is the BM25 product search,
reward.py the original score, env.py the pages and actions, tasks.py the eval / validation / train splits,
expert.py a scripted expert. Data: the folder in `env.data_path` or $WEBSHOP_DATA (see data.py).
"""

from skill1.envs.webshop.data import WebshopDataError
from skill1.envs.webshop.env import DEFAULT_MAX_STEPS, WebshopEnv
from skill1.envs.webshop.expert import expert_actions
from skill1.envs.webshop.tasks import WebshopTaskSource

INVALID_ACTION_PENALTY = 0.5  # the paper's penalty for an invalid action; applied by the agent layer

__all__ = ["DEFAULT_MAX_STEPS", "INVALID_ACTION_PENALTY", "WebshopDataError", "WebshopEnv", "WebshopTaskSource",
           "expert_actions"]
