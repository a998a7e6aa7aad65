"""Tools the model can call: what a tool gets (``context``), its schema and argument model
(``schema``), the built-in tools (``builtin``), admins' HTTP lookups (``http_tool``) and the
runner that assembles and runs an assistant's tools (``toolset``)."""
