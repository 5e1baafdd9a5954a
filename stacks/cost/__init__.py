"""The bill before deploying: ``python -m stacks.cost -c env=dev``.

A deploy-time tool beside the CDK app, not part of it: it reads the synthesised CloudFormation
templates of one environment (synthesising them first with ``app.py`` in a subprocess, or from
``--templates DIR``) and prices what they declare with a price table kept in the repository
(``prices_us_east_1.json``: one region's list prices, with the date they were taken and their
source). Nothing here imports the CDK app or the runtime (``offload/``), and nothing in them
imports this package: the templates are the only interface, so the tool prices exactly what
would be deployed.

Modules, one job each:

- :mod:`stacks.cost.prices`: the price table (``--prices FILE`` for another one).
- :mod:`stacks.cost.templates`: the templates of an environment (synth or read), and lookups.
- :mod:`stacks.cost.baseline`: the idle monthly bill, one line per billable resource type.
- :mod:`stacks.cost.usage`: the cost per 1,000 uploads and of a stated workload.
- :mod:`stacks.cost.report`: text and Markdown renderings of the lines.
- :mod:`stacks.cost.docs`: rewrites the cost section of ``docs/deploy.md`` from the above.
"""
