"""The paper's experiments, driven by the thin programs in binaries/.

    fields.py     settings read from a config: each field declared once, with its check
    pipeline.py   the shared steps: settings blocks, data, model, Theta_0 (shared Gram
                  cache), resumable training of a task, result rows
    spectrum.py   the eigenpairs of Theta_0 and the tasks sign(phi_j)
    plots.py      every figure
    <name>.py     one module per experiment: its settings and what is particular to it
                  (gram_experiment.py: the gram binary's job, one Gram into a workdir)
    cli.py        the binaries' front end (`cli.experiment_main`)
    report.py     report.md / report.html of every workdir under a folder
"""
