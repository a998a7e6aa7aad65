"""Admins' HTTP lookups as tools: the model fills the parameters of the admin's JSON schema, the
runtime fills the ``{{...}}`` placeholders from the conversation (the model never sees or supplies them)."""
from __future__ import annotations

from sqlalchemy import select

from runtime.config import DataField, HttpTool
from runtime.http_tools import call_http_tool
from runtime.models import CollectedData, Conversation
from runtime.tools.context import ToolContext, ToolError
from runtime.tools.schema import Tool, schema_arguments
from runtime.validators import InvalidValue, validate_value


def http_tool(tool: HttpTool) -> Tool:
    """An admin-defined HTTP lookup as a tool. Parameters named like the last part of a runtime-filled
    placeholder (``cpf`` for ``{{data.cpf}}``) are taken out of the schema: the model cannot supply them."""
    parameters = tool.parameters if tool.parameters.get("type") == "object" else {"type": "object", "properties": {}}
    hidden = {name.rsplit(".", 1)[1] for name in tool.bound_names}
    if hidden:
        properties = {k: v for k, v in (parameters.get("properties") or {}).items() if k not in hidden}
        required = [r for r in parameters.get("required") or [] if r not in hidden]
        parameters = parameters | {"properties": properties, "required": required}
    arguments = schema_arguments(tool.name, parameters)

    def call(ctx: ToolContext, **kwargs) -> str:
        seconds = min(tool.timeout_s, ctx.remaining_s())
        if seconds <= 0:
            raise ToolError("no time is left in this turn to call the service")
        return call_http_tool(tool, kwargs, ctx.services.settings, bound=_bound_values(ctx, tool.bound_names),
                              timeout_s=seconds)

    return Tool(tool.name, tool.description, parameters, arguments, call)


def _bound_values(ctx: ToolContext, names: list[str]) -> dict[str, str]:
    """The conversation's own values for ``{{...}}`` placeholders: its customer id, the phone number
    WhatsApp vouches for, the variables its integrator set, the data ``collect_data`` validated."""
    if not names:
        return {}
    with ctx.services.session() as session:
        conversation = session.get(Conversation, ctx.conversation_id)
        if conversation is None:
            raise ToolError("this conversation no longer exists")
        collected = {row.field: row.value for row in session.scalars(
            select(CollectedData).where(CollectedData.conversation_id == conversation.id))}
    fields = {f.name: f for f in ctx.config.data_fields}
    values = {}
    for name in names:
        scope, key = name.split(".", 1)
        if name == "customer.id":
            value = conversation.customer_id
        elif name == "customer.phone":
            # WhatsApp's wa_id is the phone number; a hidden number comes as a business-scoped user id
            wa_id = conversation.customer_id
            value = f"+{wa_id}" if conversation.channel == "whatsapp" and wa_id.isdigit() else None
        elif scope == "variables":
            value = (conversation.variables or {}).get(key)
        else:  # checked again: the field's validator may have changed since the value was saved
            value = _validated(fields.get(key), collected.get(key))
        if value in (None, ""):
            raise ToolError(_UNBOUND.get(scope, "{name} is not known in this conversation").format(name=name, key=key))
        values[name] = str(value)
    return values


def _validated(data_field: DataField | None, value: str | None) -> str | None:
    if data_field is None or value is None:
        return None
    try:
        return validate_value(data_field, value)
    except InvalidValue:
        return None


_UNBOUND = {
    "customer": "this tool needs {name}, which this conversation does not have (only WhatsApp gives a verified "
                "phone number); do not ask the customer for it: offer a human agent instead",
    "data": "this tool needs the customer's {key}: ask for it and save it with collect_data first",
    "variables": "this tool needs the variable {key}, which this conversation was not started with; "
                 "offer a human agent instead",
}
