"""WhatsApp Cloud API channel: senders, signed webhooks, inbound types, statuses, the 24-hour window,
templates, rendering for WhatsApp, splitting into WhatsApp-sized messages and the Graph API client."""
