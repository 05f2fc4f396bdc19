"""What a cycle reports after it has decided: each is optional, imported only when configured, and can change
neither the decision nor the relays (cycle._report calls them after the state is saved)."""


def run_sandboxed(config, argv: tuple, stdin: bytes, timeout: float, what: str) -> bytes:  # noqa: ANN001 (Config)
    """The stdout of a network-facing report's child (`what`: "the sender", "the publisher"), run in the collector
    sandbox as the unprivileged user within `timeout`; DreadpiError (or OSError) says why not, naming `what`."""
    from dreadpi import sandbox
    from dreadpi.errors import DreadpiError

    who = sandbox.identity(config.collector.user, config.collector.group)
    limits = sandbox.Limits(timeout=timeout, memory_mb=config.collector.memory_limit)
    result = sandbox.run(argv, stdin, who, limits)
    failure = sandbox.describe_exit(result)
    if failure:
        raise DreadpiError(f"{what} {failure}")
    return result.stdout
