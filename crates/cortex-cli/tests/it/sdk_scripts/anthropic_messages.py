# The official `anthropic` SDK against Cortex's /v1/messages: plain, streamed (the stream
# helper and raw events), a tool call and its result (plain and streamed), and a wrong key.
# MODEL names a model on an OpenAI-style provider (translated) or an Anthropic one (passed
# through); the answers must be the same.
import os

import anthropic

base = os.environ["CORTEX_BASE_URL"]
model = os.environ["MODEL"]
client = anthropic.Anthropic(base_url=base, api_key=os.environ["CORTEX_KEY"], max_retries=0)
hi = [{"role": "user", "content": "hi"}]

message = client.messages.create(model=model, max_tokens=64, system="be brief", messages=hi)
assert message.type == "message" and message.role == "assistant", message
assert message.content[0].type == "text", message
assert message.content[0].text == "hello from the fake upstream", message
assert message.stop_reason == "end_turn", message
assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7), message.usage

with client.messages.stream(model=model, max_tokens=64, messages=hi) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == "tok0 tok1 tok2 ", text
assert final.stop_reason == "end_turn", final
assert final.usage.output_tokens == 3, final.usage

events = [event.type for event in client.messages.create(model=model, max_tokens=64, messages=hi, stream=True)]
assert events[0] == "message_start" and events[-1] == "message_stop", events
assert "content_block_delta" in events and "message_delta" in events, events

tools = [{
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
question = [{"role": "user", "content": "What is the weather in Paris?"}]
first = client.messages.create(model=model, max_tokens=64, tools=tools, messages=question)
assert first.stop_reason == "tool_use", first
calls = [block for block in first.content if block.type == "tool_use"]
assert len(calls) == 1 and calls[0].name == "get_weather", first
assert calls[0].input == {"city": "Paris"}, calls[0]
assistant = [{"type": "tool_use", "id": calls[0].id, "name": calls[0].name, "input": calls[0].input}]
result = [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "22 degrees"}]
second = client.messages.create(
    model=model,
    max_tokens=64,
    tools=tools,
    messages=question + [{"role": "assistant", "content": assistant}, {"role": "user", "content": result}],
)
assert second.content[0].text == "the tool said: 22 degrees", second

with client.messages.stream(model=model, max_tokens=64, tools=tools, messages=question) as stream:
    streamed = stream.get_final_message()
streamed_calls = [block for block in streamed.content if block.type == "tool_use"]
assert streamed.stop_reason == "tool_use", streamed
assert streamed_calls and streamed_calls[0].input == {"city": "Paris"}, streamed

try:
    anthropic.Anthropic(base_url=base, api_key="ctx_wrong", max_retries=0).messages.create(
        model=model, max_tokens=8, messages=hi
    )
    raise SystemExit("a wrong key was accepted")
except anthropic.AuthenticationError as error:
    assert error.status_code == 401, error
print("anthropic ok")
