"""The talk's two AgentJo examples, unchanged except that `llm` points at `r1lab serve`.

    r1lab serve runs/quickstart/grpo/checkpoint --port 8000 &
    python examples/agentjo_demo.py [http://127.0.0.1:8000/v1]

A 135M model rarely writes valid structured output; the machinery (HTTP, reasoning split, parsing,
function calling) is what this shows. tests/test_serve.py runs both through a scripted engine.
"""
import sys

from r1lab.llm import make_llm

_llm = make_llm(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1")


def llm(system_prompt: str, user_prompt: str) -> str:
    ''' Here, we use r1lab serve (an OpenAI-compatible API); the reply comes without its <think> part '''
    return _llm(system_prompt=system_prompt, user_prompt=user_prompt)


from agentjo import *  # noqa: E402,F403  (as in the talk)

res = strict_json(system_prompt = "Generate 1 main category and 3 sub-categories for topic",
                  user_prompt = "DeepSeek",
                  output_format = {"Main Category": "Suitable for 12 year olds, type: str",
                                   "Sub-categories": "type: list"},
                  llm = llm)

print(res)


# Define a function for appointment
def make_appointment(person_name: str, start_time: str, end_time: str):
    '''Makes an appointment with person_name from start_time to end_time. Time is in xxxxH'''
    return f"Appointment made with {person_name} from {start_time} to {end_time}"

# Create the Agent
agent = Agent(
    agent_name = "Personal Secretary",
    agent_description = "You are a friendly assistant.",
    llm = llm,
).assign_functions([make_appointment])

result = agent.run("Make me an appointment with Paul at 3pm, Sally at 4pm. 1 hour each")
