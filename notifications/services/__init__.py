"""Writes of the notifications app, one module per concern: publishing events (`events`),
sending deliveries (`deliveries`) and recording how their status moves
(`delivery_status`), failed jobs (`failed_jobs`), a user's channel and digest choices
(`preferences`) and their inbox (`inbox`). Import from the module itself."""
