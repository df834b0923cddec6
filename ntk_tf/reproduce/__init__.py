"""The paper, reproduced one figure at a time: plan, run, collect, render.

    figures.py   FIGURES: every figure and table of the paper, the experiment and
                 config variant that make it at each scale, its claim, its numbers
    plan.py      the runs and tasks of a figure, what is done, time estimates
    runner.py    the runs as resumable subprocesses, at most --jobs at a time
    tables.py    the committed CSVs: rows merged from workdirs, adoption, rates
    pages.py     PNGs, one page per figure and the index, from the CSVs alone

The program is binaries/reproduce.py.
"""
