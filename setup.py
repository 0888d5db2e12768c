"""The one thing setup.cfg cannot declare: the C task-event recorder
(zray/worker/_task_recorder.c). It is optional: where it cannot be built
(no C compiler) zray runs its Python twin, slower (task_recorder.py)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("zray.worker._task_recorder", ["zray/worker/_task_recorder.c"],
                             optional=True)])
