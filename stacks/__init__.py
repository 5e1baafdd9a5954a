"""CDK constructs and stacks (CDK only: no runtime logic). See issue "The CDK app"."""
