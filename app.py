#!/usr/bin/env python3
"""CDK entry point: only wires stacks together (``cdk synth`` / ``python app.py``).

The stacks themselves (network, storage, queue, database, auth, API, workers, observability)
are the CDK issue's work; until they land this app synthesises an empty assembly.
"""

import aws_cdk as cdk

app = cdk.App()
app.synth()
