# The official `openai` SDK's Responses API against Cortex's /v1/responses: plain and
# streamed, with a function tool, its call and its output. MODEL names a model on a provider
# that speaks chat completions only (translated) or the Responses API itself (passed through).
import json
import os

from openai import OpenAI

model = os.environ["MODEL"]
client = OpenAI(base_url=os.environ["CORTEX_BASE_URL"] + "/v1", api_key=os.environ["CORTEX_KEY"], max_retries=0)

response = client.responses.create(model=model, instructions="be brief", input="hi")
assert response.status == "completed", response
assert response.output_text == "hello from the fake upstream", response
assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7), response.usage

events = list(client.responses.create(model=model, input="hi", stream=True))
types = [event.type for event in events]
assert types[0] == "response.created" and types[-1] == "response.completed", types
text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
assert text == "tok0 tok1 tok2 ", text
assert events[-1].response.output_text == "tok0 tok1 tok2 ", events[-1]
assert events[-1].response.usage.output_tokens == 3, events[-1].response.usage
numbers = [event.sequence_number for event in events]
assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers

tools = [{
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
question = [{"role": "user", "content": "What is the weather in Paris?"}]
first = client.responses.create(model=model, input=question, tools=tools)
calls = [item for item in first.output if item.type == "function_call"]
assert len(calls) == 1 and calls[0].name == "get_weather", first
assert json.loads(calls[0].arguments) == {"city": "Paris"}, calls[0]
follow_up = question + [
    {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
    {"type": "function_call_output", "call_id": calls[0].call_id, "output": "22 degrees"},
]
second = client.responses.create(model=model, input=follow_up, tools=tools)
assert second.output_text == "the tool said: 22 degrees", second

events = list(client.responses.create(model=model, input=question, tools=tools, stream=True))
done = [e for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"]
assert done and json.loads(done[0].item.arguments) == {"city": "Paris"}, [e.type for e in events]
assert events[-1].type == "response.completed", events[-1]
print("responses ok")
