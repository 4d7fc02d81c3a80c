"""Email through Postmark's batch API, when POSTMARK_SERVER_TOKEN is set: its client
(`client`). Which email goes this way, and how a delivery becomes a message, is the email
sender's (notifications/providers/email.py)."""
