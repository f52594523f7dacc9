"""Agent environments: protocol, tool schemas, tool-call parsing, synthesized environments."""
