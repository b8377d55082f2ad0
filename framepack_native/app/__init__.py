"""The web app (`framepack-native serve`): the official FramePack app's workflow in the browser, on a job queue.

    params.py   every parameter of a job: defaults, ranges (the official app's sliders), its JSON, the pipeline call
    jobs.py     the persistent job queue: queue.json, one job running at a time, stop, recovery after a restart
    runner.py   one job through FramePackPipeline: per-step preview and progress, the mp4 after every section
    ui.py       the Gradio page (an optional extra: pip install -e '.[ui]')

Only ui.py imports Gradio; the rest is plain Python, tested without a browser.
"""
