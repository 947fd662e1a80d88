"""The operations layer: the audit logger and its history database (ops.history, ops.logger) and the
REST API with its web console (ops.web). It sits beside the agent: it reads the broker as a client does
and acts only through signed commands, never through an agent's own store."""
