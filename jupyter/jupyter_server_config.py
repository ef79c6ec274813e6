# JupyterLab as `make lab` starts it (jupyter lab --config=jupyter/jupyter_server_config.py):
# the mask explorer opens directly, and the notebook templates in notebooks/ are saved without
# outputs (maxq.lab.pre_save_hook), so using them leaves `git status` clean.
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # this checkout's maxq, also for the hook

c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.root_dir = str(ROOT)
c.LabApp.default_url = "/lab/tree/notebooks/masks.ipynb"
c.FileContentsManager.pre_save_hook = "maxq.lab.pre_save_hook"
