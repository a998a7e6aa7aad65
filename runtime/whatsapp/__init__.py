"""WhatsApp Cloud API channel: senders, signed webhooks, inbound types, statuses, the 24-hour window,
templates, rendering for WhatsApp and the Graph API client."""
